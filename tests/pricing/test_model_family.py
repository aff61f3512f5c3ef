"""``model_family``: the name reports group a model's snapshots and spellings under."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import run_python

from tokenmeter.pricing import model_family


@pytest.mark.parametrize(
    ("served", "family"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("openai/gpt-4o", "gpt-4o"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("o3-2025-04-16", "o3"),
        ("gpt-4.1-mini", "gpt-4.1-mini"),
        ("text-embedding-3-small", "text-embedding-3-small"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("claude-sonnet-4@20250514", "claude-sonnet-4"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        # OpenRouter's dotted spellings are the same models as Anthropic's dashed ones.
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("anthropic/claude-opus-4.1", "claude-opus-4-1"),
        ("anthropic/claude-3.7-sonnet", "claude-3-7-sonnet"),
        ("anthropic/claude-3.5-sonnet-20240620", "claude-3-5-sonnet"),
        ("models/gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash-preview"),
        ("gemini-2.5-flash-image", "gemini-2.5-flash-image"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini"),
        ("gpt-4o-2024-08-06.ft-d93dda6110004b4da3472d96f4dd4777-ft", "ft:gpt-4o"),  # Azure's
        ("llama-3.1-405b", "llama-3.1-405b"),
    ],
)
def test_family(served: str, family: str) -> None:
    assert model_family(served) == family


def test_a_manual_record_and_the_served_snapshot_share_a_family() -> None:
    """The two rows new users saw for one model: ``gpt-4o`` recorded by hand and the SDK's
    ``gpt-4o-2024-08-06``."""
    assert model_family("gpt-4o") == model_family("gpt-4o-2024-08-06")


def test_a_long_name_of_version_like_parts_is_grouped_without_backtracking(
    tmp_path: Path,
) -> None:
    """A stored model name is not bounded in a JSONL file (edited, or written by another tool):
    100 KB of ``-1234`` made the version-suffix pattern backtrack for minutes (holding the GIL),
    and ``tokenmeter report --by family`` with it. Run in a child process, killed after 120 s."""
    code = (
        "from tokenmeter.pricing import model_family\n"
        "for part in ('-1234', '-12-34', '-123', '-latest'):\n"
        "    name = 'gpt-4o' + part * (200_000 // len(part)) + 'x'\n"
        "    assert model_family(name) == name, part\n"
        "print(model_family('gpt-4o' + '-x' * 1000 + '-2024-08-06-latest'))\n"
    )
    done = run_python("-c", code, env=dict(os.environ), cwd=tmp_path)
    assert done.stdout.strip() == "gpt-4o" + "-x" * 1000
