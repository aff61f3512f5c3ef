"""The test suite itself: any selection of its folders collects, in any order.

Every folder's ``conftest.py`` is the top-level module ``conftest`` in pytest's default import
mode, so a test that did ``from conftest import build_record`` got whichever folder's conftest
pytest had imported last: ``pytest tests/sinks tests/pricing`` could not collect the sink tests.
Helpers shared by name live in modules no other folder has (``tests/helpers.py``,
``tests/sinks/sink_helpers.py``, ``tests/providers/provider_helpers.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
#: ``from conftest import ...`` or ``import conftest`` at the start of a line, in a test module or
#: in a script a test runs (scripts held in strings included). ``from .conftest`` (tests/cli, a
#: package) names its own folder's conftest and is fine.
_CONFTEST_BY_NAME = re.compile(r"^\s*(?:from\s+conftest\s+import|import\s+conftest\b)", re.M)


def test_no_module_imports_a_conftest_by_its_bare_name() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{text.count(chr(10), 0, found.start()) + 1}"
        for path in sorted(TESTS.rglob("*.py"))
        for text in [path.read_text(encoding="utf-8")]
        for found in _CONFTEST_BY_NAME.finditer(text)
    ]
    assert offenders == []


def test_the_sink_tests_collect_beside_another_folder(tmp_path: Path) -> None:
    """The pricing folder's conftest, imported last, took the name ``conftest``: 6 of the 9 sink
    modules failed collection with "cannot import name 'build_record' from 'conftest'"."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    command += ["--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml")]
    command += [str(TESTS / "sinks"), str(TESTS / "pricing" / "test_model_family.py")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert "error" not in done.stdout.splitlines()[-1], done.stdout[-3000:]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
