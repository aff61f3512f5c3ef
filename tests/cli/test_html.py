"""The HTML report: self-contained, escaped, and rendered by a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import RECORDS, SESSIONS, RunCli, rec, write_sqlite

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)"
)

EVIL_MODEL = "<img src=x onerror=alert(1)>"
EVIL_SESSION = "<script>document.title='pwned'</script>"
EVIL_TAG = '"><b>bold</b>'


@pytest.fixture
def html_report(cli: RunCli, tmp_path: Path) -> Path:
    evil = [
        rec(
            20 + i,
            f"2026-11-0{1 + i}T10:00:00.000Z",
            "openai",
            EVIL_MODEL,
            100,
            100,
            "0.05",
            session=("s<1>", EVIL_SESSION),
            tags={"feature": EVIL_TAG},
        )
        for i in range(3)
    ]
    db = write_sqlite(tmp_path / "usage.db", RECORDS + evil, SESSIONS)
    out = tmp_path / "report.html"
    code, _, err = cli(
        "report", "--source", str(db), "--by", "tag:feature", "--detailed", "-o", str(out)
    )
    assert code == 0, err
    return out


def test_self_contained_and_escaped(html_report: Path) -> None:
    page = html_report.read_text()
    # Nothing to fetch: no scripts, stylesheets, images or fonts from anywhere.
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert not re.search(r"""<[^>]*\s(src|href)\s*=|url\(|@import""", page)
    # User strings appear escaped, never as markup.
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;b&gt;bold&lt;/b&gt;" in page
    for chart in ("chart-daily", "chart-models", "chart-sessions"):
        assert f'id="{chart}"' in page


def _chromium(page: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1200,2000",
                *mode,
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )


def _console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@needs_chromium
def test_chromium_renders_charts_without_errors(html_report: Path, tmp_path: Path) -> None:
    result = _chromium(html_report, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert _console_messages(result.stderr) == []
    assert "<title>tokenmeter report</title>" in dom  # the injected script never ran
    assert "<script" not in dom and "<img" not in dom and "<b>bold" not in dom
    for chart in ("chart-daily", "chart-models", "chart-sessions"):
        section = dom.split(f'id="{chart}"', 1)[1].split("</div>", 1)[0]
        assert "<svg" in section and section.count('class="bar"') >= 3, chart
    assert "Calls (9)" in dom and "TOTAL" in dom

    shot = tmp_path / "report.png"
    result = _chromium(html_report, f"--screenshot={shot}")
    assert result.returncode == 0 and _console_messages(result.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@needs_chromium
def test_chromium_check_catches_page_errors(tmp_path: Path) -> None:
    """The harness above can fail: a page that throws is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>missingFunction()</script>")
    messages = _console_messages(_chromium(bad, "--dump-dom").stderr)
    assert any("missingFunction" in line for line in messages)


def test_empty_period_still_renders(cli: RunCli, tmp_path: Path) -> None:
    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    code, out, _ = cli("report", "--source", str(db), "--since", "2030-01-01", "--format", "html")
    assert code == 0 and out.count("No priced calls in this period.") == 3
