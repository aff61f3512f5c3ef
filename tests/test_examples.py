"""Every example runs offline, end to end, against FakeProvider with the real SDKs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers import run_python

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str, cwd: Path) -> str:
    env = {**os.environ, "TOKENMETER_DIR": str(cwd / "meter")}
    return run_python(str(EXAMPLES / name), env=env, cwd=cwd).stdout


@pytest.mark.parametrize(
    ("name", "calls"),
    [
        ("openai_chat.py", 3),
        ("anthropic_messages.py", 2),
        ("gemini.py", 2),
        ("gemini_legacy.py", 2),
    ],
)
def test_provider_example_meters_every_call(name: str, calls: int, tmp_path: Path) -> None:
    out = run(name, tmp_path)
    match = re.search(r"calls=(\d+) .*cost=\$(\d+\.\d+)", out)
    assert match, out
    assert int(match.group(1)) == calls
    assert float(match.group(2)) > 0
    assert (tmp_path / "meter" / "usage.db").exists()  # the default SQLite sink


def test_sessions_example(tmp_path: Path) -> None:
    out = run("sessions.py", tmp_path)
    assert "nightly-job: 3 calls" in out
    assert "over budget: True" in out
    assert "records written: 5" in out
    lines = (tmp_path / ".tokenmeter" / "example-usage.jsonl").read_text().splitlines()
    assert len(lines) == 5
    # The hand-made estimate is characters / 4: 600 and 1,500 characters of text.
    estimated = [json.loads(line) for line in lines if json.loads(line)["estimated"]]
    assert sorted(r["input_tokens"] for r in estimated) == [150, 375]
