"""The HTML dashboard: self-contained, escaped, and rendered by a real headless Chromium at
1400 and 390 px: no console errors, no horizontal overflow, charts that carry the right numbers."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import tempfile
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenmeter.cli._source import resolve_source
from tokenmeter.cli.reports import _query
from tokenmeter.cli.reports._html import _SCRIPT, nice_ticks
from tokenmeter.cli.reports._model import parse_dimension

from .conftest import RECORDS, SESSIONS, TOTAL_COST, RunCli, rec, write_jsonl, write_sqlite

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)"
)

EVIL_MODEL = "<img src=x onerror=alert(1)>"
EVIL_SESSION = "<script>document.title='pwned'</script>"
EVIL_TAG = '"><b>bold</b>'
EVIL_ALERT = "</script><script>document.title='alert'</script>"
LONG_KEY = "k" * 300  # a heading that must wrap at 390 px

#: Cost per day of RECORDS plus the three evil records ($0.05 a day), worked out by hand.
DAYS = {
    "2026-11-01": Decimal("0.069845678901"),  # 0.0075 + 0.012345678901 + 0.05
    "2026-11-02": Decimal("0.051975"),  # 0.00185 + 0.000125 + 0.05
    "2026-11-03": Decimal("1.284567890123"),  # 1.234567890123 + 0.05
}


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
            tags={"feature": EVIL_TAG, **({LONG_KEY: "v"} if i == 0 else {})},
        )
        for i in range(3)
    ]
    db = write_sqlite(tmp_path / "usage.db", RECORDS + evil, SESSIONS)
    (tmp_path / "alerts.jsonl").write_text(
        json.dumps(
            {
                "time": "2026-11-02T09:00:00.000Z",
                "rule": "budget",
                "scope": EVIL_ALERT,
                "observed": 1.2,
                "threshold": 1,
                "session_id": "sess-chat",
            }
        )
        + "\n"
    )
    out = tmp_path / "report.html"
    code, _, err = cli(
        "report",
        "--source",
        str(db),
        "--by",
        "session",
        "--by",
        "tag:feature",
        "--detailed",
        "--since",
        "2026-11-01",
        "--until",
        "2026-11-03",
        "-o",
        str(out),
    )
    assert code == 0, err
    return out


def test_nice_ticks() -> None:
    assert nice_ticks(Decimal("2.15")) == [Decimal("0.5") * i for i in range(6)]
    assert nice_ticks(Decimal("1.284567890123"))[-1] == Decimal("1.5")
    assert nice_ticks(Decimal("0.0003"))[-1] == Decimal("0.0003")
    assert nice_ticks(Decimal("7"))[-1] == Decimal("8")
    assert nice_ticks(Decimal("0")) == [Decimal(0), Decimal(1)]
    for peak in ("0.000123", "0.99", "1", "42.5", "999"):
        ticks = nice_ticks(Decimal(peak))
        assert ticks[-1] >= Decimal(peak) and 2 <= len(ticks) <= 7


def test_self_contained_and_escaped(html_report: Path) -> None:
    page = html_report.read_text()
    # Nothing to fetch: no stylesheets, images, fonts or scripts from anywhere.
    assert "<link" not in page and "<img" not in page
    tags_only = re.sub(r'"[^"]*"', '""', page)  # attribute values hold escaped user text
    assert not re.search(r"""<[^>]*\s(src|href)\s*=|url\(|@import""", tags_only)
    # One script: ours, the table sorter; no user text can close or open another.
    assert page.count("<script") == 1 and page.count("</script>") == 1
    assert f"<script>{_SCRIPT}</script>" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;/script&gt;&lt;script&gt;document.title=&#x27;alert&#x27;" in page
    for section in ("chart-daily", "chart-models", "chart-names", "chart-sessions", "alerts"):
        assert f'id="{section}"' in page
    assert 'id="chart-tag-0" data-tag="feature"' in page and "Generated " in page


#: Bidirectional embeddings, overrides and isolates: each reorders how the text after it shows.
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_bidi_overrides_in_the_data_are_shown_not_obeyed(cli: RunCli, tmp_path: Path) -> None:
    """A session named ``s`` RLO ``gnp.exe`` would read ``sexe.png`` in the dashboard (and in
    markdown, or a terminal that does bidi): every such character is shown as U+FFFD."""
    records = [
        rec(
            1,
            "2026-11-01T10:00:00.000Z",
            "openai",
            f"gpt-4o{BIDI}",
            100,
            100,
            "0.05",
            session=("s-1", "s\u202egnp.exe"),
            tags={"team": "\u2067core"},
        )
    ]
    db = write_sqlite(tmp_path / "usage.db", records, SESSIONS)
    for fmt in ("html", "markdown", "table"):
        out = tmp_path / f"report.{fmt}"
        args = ["--by", "model,name,tag:team", "--detailed", "--format", fmt, "-o", str(out)]
        code, _, err = cli("report", "--source", str(db), *args)
        assert code == 0, err
        page = out.read_text()
        assert not set(BIDI) & set(page), fmt
        assert "s\ufffdgnp.exe" in page and "gpt-4o" + "\ufffd" * len(BIDI) in page, fmt


#: Characters that print as nothing: a soft hyphen, zero-width spaces and joiners, the BOM.
HIDDEN = "\xad\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"


def test_names_with_characters_that_print_as_nothing_are_told_apart(
    cli: RunCli, tmp_path: Path
) -> None:
    """``gpt\u200b-4o`` showed as a second ``gpt-4o`` row in every format but JSON and CSV."""
    records = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 100, 100, "0.05"),
        rec(2, "2026-11-01T11:00:00.000Z", "openai", f"gpt{HIDDEN}-4o", 100, 100, "0.05"),
    ]
    db = write_sqlite(tmp_path / "usage.db", records, SESSIONS)
    for fmt in ("html", "markdown", "table"):
        out = tmp_path / f"report.{fmt}"
        code, _, err = cli("report", "--source", str(db), "--format", fmt, "-o", str(out))
        assert code == 0, err
        page = out.read_text()
        assert not set(HIDDEN) & set(page), fmt
        assert "gpt" + "\ufffd" * len(HIDDEN) + "-4o" in page, fmt
    code, out, _ = cli("tail", "--source", str(db))
    assert code == 0 and "gpt" + "\ufffd" * len(HIDDEN) + "-4o" in out


def test_empty_period_still_renders(cli: RunCli, tmp_path: Path) -> None:
    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    code, out, _ = cli("report", "--source", str(db), "--since", "2030-01-01", "--format", "html")
    assert code == 0 and out.count("No priced calls in this period.") == 4


def test_previous_period_delta(cli: RunCli, tmp_path: Path) -> None:
    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    code, out, _ = cli(
        "report", "--source", str(db), "--since", "2026-11-03", "--until", "2026-11-03",
        "--format", "html",
    )  # fmt: skip
    # Nov 3: 1.234567890123; Nov 2 before it: 0.001975.
    assert code == 0 and "+62409.8% vs $0.00198 the period before" in out


def test_alert_lines_are_checked_as_tokenmeter_alerts_checks_them(
    cli: RunCli, tmp_path: Path
) -> None:
    """The dashboard listed lines of alerts.jsonl that ``tokenmeter alerts`` skips as not alerts
    (``NaN`` and ``1e999`` shown as "nan" and "inf", a time that is no time, a rule that is a
    number), and compared times as text, so an alert at ``2026-11-03T01:00:00+02:00`` (23:00 UTC
    on the 2nd) fell outside the 2nd."""
    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    lines = [
        '{"time":"2026-11-02T10:00:00.000Z","rule":"kept_rule","observed":6000,"threshold":5000}',
        '{"time":"2026-11-03T01:00:00+02:00","rule":"offset_rule","observed":1}',
        '{"time":"2026-11-02T11:00:00.000Z","rule":"nan_rule","observed":NaN}',
        '{"time":"2026-11-02T12:00:00.000Z","rule":"inf_rule","threshold":1e999}',
        '{"time":"not a time","rule":"garbage_time_rule"}',
        '{"time":"0001-01-01T00:00:00+01:00","rule":"before_year_1_rule"}',
        '{"time":"2026-11-02T13:00:00.000Z","rule":7}',
    ]
    (tmp_path / "alerts.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = cli(
        "report", "--source", str(db), "--since", "2026-11-02", "--until", "2026-11-02",
        "--format", "html",
    )  # fmt: skip
    assert code == 0, err
    assert "Budgets and alerts (2)" in out
    assert "kept_rule" in out and "offset_rule" in out and "2026-11-02T23:00:00.000Z" in out
    assert not re.search(r"nan_rule|inf_rule|garbage_time_rule|before_year_1_rule", out)


def test_an_older_writers_float_noise_is_not_shown(cli: RunCli, tmp_path: Path) -> None:
    """alerts.jsonl lines written before the budgets rounded their spend held the ledger's
    float sum (0.0010500000000000002): the dashboard (and the periodic markdown report, which
    reads alerts the same way) printed it so, where ``tokenmeter alerts`` says 0.00105."""
    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    (tmp_path / "alerts.jsonl").write_text(
        '{"time":"2026-11-02T10:00:00.000Z","rule":"budget_100pct",'
        '"observed":0.0010500000000000002,"threshold":0.24000000000000002}\n'
    )
    code, out, err = cli(
        "report", "--source", str(db), "--since", "2026-11-02", "--until", "2026-11-02",
        "--format", "html",
    )  # fmt: skip
    assert code == 0, err
    assert "budget_100pct" in out and "0.00105" in out and "0.24" in out
    assert "0.0010500000000000002" not in out and "0.24000000000000002" not in out


def _tag_bars(page: str) -> dict[str, list[tuple[str, Decimal]]]:
    """Each tag chart's bars, in page order: (label, exact cost)."""
    charts: dict[str, list[tuple[str, Decimal]]] = {}
    for chunk in page.split('id="chart-tag-')[1:]:
        key = re.match(r'\d+" data-tag="([^"]*)"', chunk)
        assert key, chunk[:200]
        panel = chunk.split("<h2>")[0]
        bars = re.findall(
            r'class="bar" style="[^"]*" data-label="([^"]*)" data-cost="([^"]*)"', panel
        )
        charts[key.group(1)] = [(label, Decimal(cost)) for label, cost in bars]
    return charts


#: 12 values of "team" ($0.01 .. $0.12) and nine keys with one call each, besides RECORDS' tags.
TAGGED = [
    *RECORDS,
    *(
        rec(40 + i, "2026-11-02T09:00:00.000Z", "openai", "gpt-4o", 5, 5, f"{(i + 1) / 100}",
            tags={"team": f"t{i:02d}"})
        for i in range(12)
    ),
    *(
        rec(60 + i, "2026-11-02T10:00:00.000Z", "openai", "gpt-4o", 5, 5, "0.001",
            tags={f"k{i}": "x"})
        for i in range(9)
    ),
]  # fmt: skip
TAGGED_COST = TOTAL_COST + Decimal("0.78") + Decimal("0.009")
CHAT_COST = Decimal("0.0075") + Decimal("0.012345678901") + Decimal("1.234567890123")


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_a_chart_per_tag_key_in_the_data(cli: RunCli, tmp_path: Path, kind: str) -> None:
    if kind == "sqlite":
        source = write_sqlite(tmp_path / "usage.db", TAGGED, SESSIONS)
    else:
        source = write_jsonl(tmp_path / "usage.jsonl", TAGGED)
    code, page, err = cli("report", "--source", str(source), "--format", "html")
    assert code == 0, err
    charts = _tag_bars(page)
    # Most used keys first, at most 8 charts; the rest are named.
    assert list(charts) == ["team", "feature", "k0", "k1", "k2", "k3", "k4", "k5"]
    assert "3 more tag keys without a chart: k6, k7, k8</p>" in page
    # The 10 most costly values, the other 3 summed, then the calls without the key.
    team = charts["team"]
    assert team[:10] == [(f"t{i:02d}", Decimal(i + 1) / 100) for i in range(11, 1, -1)]
    assert team[10] == ("3 other values", Decimal("0.03") + Decimal("0.00185"))
    assert team[11] == ("(no team tag)", TAGGED_COST - Decimal("0.78") - Decimal("0.00185"))
    assert len(team) == 12
    assert "13 values on 13 of 27 calls" in page
    feature = charts["feature"]
    assert feature == [
        ("chat", CHAT_COST),
        ("search", Decimal("0.00185")),
        ("(no feature tag)", TAGGED_COST - CHAT_COST - Decimal("0.00185")),
    ]
    assert charts["k0"] == [
        ("x", Decimal("0.001")),
        ("(no k0 tag)", TAGGED_COST - Decimal("0.001")),
    ]


def test_a_by_tag_key_always_has_its_chart(cli: RunCli, tmp_path: Path) -> None:
    source = write_sqlite(tmp_path / "usage.db", TAGGED, SESSIONS)
    code, page, err = cli("report", "--source", str(source), "--by", "tag:k8", "--format", "html")
    assert code == 0, err
    assert list(_tag_bars(page)) == ["k8", "team", "feature", "k0", "k1", "k2", "k3", "k4"]
    assert "3 more tag keys without a chart: k5, k6, k7</p>" in page


def test_tag_charts_follow_the_window_and_filters(cli: RunCli, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "usage.jsonl", TAGGED)
    code, page, err = cli(
        "report", "--source", str(source), "--since", "2026-11-03", "--model", "gpt-4o-mini",
        "--format", "html",
    )  # fmt: skip
    assert code == 0, err
    assert _tag_bars(page) == {"feature": [("chat", Decimal("1.234567890123"))]}
    assert "more tag keys" not in page


def test_a_jsonl_key_with_too_many_values_keeps_exact_totals(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays flat on a tag with a value per call: past a bound, new values are summed
    together; the key's total is still exact and the chart says its ranking is partial."""
    monkeypatch.setattr(_query, "_TAG_VALUES_KEPT", 4)
    monkeypatch.setattr(_query, "_TAG_KEYS_KEPT", 3)
    source = write_jsonl(tmp_path / "usage.jsonl", TAGGED)
    code, page, err = cli("report", "--source", str(source), "--format", "html")
    assert code == 0, err
    charts = _tag_bars(page)
    assert list(charts) == ["team", "feature", "k0"]  # k1 .. k8 came after 3 keys were kept
    team = dict(charts["team"])
    assert list(team)[:4] == ["t02", "t01", "t00", "core"]  # the first 4 values seen, ranked
    assert sum(team.values()) - team["(no team tag)"] == Decimal("0.78185")
    assert "ranked among the first ones seen" in page
    assert "8 more tag keys (too many to total)</p>" in page  # k1 .. k8


def test_sql_totals_the_most_used_tag_keys(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_query, "_TAG_KEYS_KEPT", 3)
    source = write_sqlite(tmp_path / "usage.db", TAGGED, SESSIONS)
    code, page, err = cli("report", "--source", str(source), "--format", "html")
    assert code == 0, err
    assert list(_tag_bars(page)) == ["team", "feature", "k0"]  # 13, 4 and 1 calls
    assert "8 more tag keys (too many to total)</p>" in page


def test_no_tags_no_tag_charts(cli: RunCli, tmp_path: Path) -> None:
    untagged = [r.model_copy(update={"tags": {}}) for r in RECORDS]
    source = write_sqlite(tmp_path / "usage.db", untagged, SESSIONS)
    code, page, err = cli("report", "--source", str(source), "--format", "html")
    assert code == 0, err
    assert 'id="tags"' not in page and "chart-tag-" not in page


# --- in a real browser ---------------------------------------------------------------------------

_PROBE = """
<script>
(function () {
  var r = {innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth};
  function box(e) { return e.getBoundingClientRect(); }
  r.outside = [].filter.call(document.querySelectorAll("main *"), function (e) {
    return !e.closest(".scroll") && box(e).width > 0 && box(e).right > window.innerWidth + 0.5;
  }).map(function (e) { return e.tagName + "." + e.className; }).slice(0, 10);
  var plot = document.querySelector("#chart-daily .plot");
  r.plotHeight = box(plot).height;
  r.top = document.querySelector("#chart-daily .chart").getAttribute("data-top");
  r.days = [].map.call(document.querySelectorAll("#chart-daily .col"), function (c) {
    var inner = c.firstElementChild;
    return [c.getAttribute("data-day"), c.getAttribute("data-cost"), box(inner).height,
            [].map.call(c.querySelectorAll(".seg"), function (s) {
              return [s.getAttribute("data-label"), s.getAttribute("data-cost"), box(s).height];
            })];
  });
  r.models = [].map.call(document.querySelectorAll("#chart-models .bar"), function (b) {
    return [b.getAttribute("data-label"), b.getAttribute("data-cost"), box(b).width,
            box(b.parentNode).width];
  });
  r.tags = [].map.call(document.querySelectorAll("#tags .panel"), function (p) {
    return [p.getAttribute("data-tag"), [].map.call(p.querySelectorAll(".bar"), function (b) {
      return [b.getAttribute("data-label"), b.getAttribute("data-cost"), box(b).width];
    })];
  });
  r.sessions = [].map.call(document.querySelectorAll("#chart-sessions .label"), function (l) {
    return l.textContent;
  });
  r.axisFont = [].map.call(document.querySelectorAll(".yaxis span, .xaxis span"), function (s) {
    return parseFloat(getComputedStyle(s).fontSize);
  });
  r.yLabels = [].map.call(document.querySelectorAll(".yaxis span"), function (s) {
    return s.textContent;
  });
  var table = document.querySelector("#main-table table");
  var costColumn = [].map.call(table.tHead.rows[0].cells, function (c) {
    return c.textContent;
  }).indexOf("Cost");
  function firstColumn() {
    return [].map.call(table.tBodies[0].rows, function (row) {
      return row.cells[costColumn].getAttribute("data-sort");
    });
  }
  var button = table.tHead.rows[0].cells[costColumn].querySelector("button");
  button.click();
  r.sortedDesc = firstColumn();
  button.click();
  r.sortedAsc = firstColumn();
  r.title = document.title;
  parent.postMessage(JSON.stringify(r), "*");
})();
</script>
"""

#: Headless Chromium will not make a window narrower than 500 px: the page is measured in an
#: iframe of the width under test, which reports back by postMessage.
_FRAME = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="{src}" style="border:0;display:block;width:{width}px;height:2400px"></iframe>
<pre id="probe"></pre>
<script>
window.addEventListener("message", function (e) {{
  document.getElementById("probe").textContent = e.data;
}});
</script></body></html>
"""


def _framed(page: Path, width: int) -> Path:
    frame = page.with_name(f"frame-{width}-{page.name}")
    frame.write_text(_FRAME.format(src=page.name, width=width))
    return frame


def _chromium(page: Path, width: int, *mode: str) -> subprocess.CompletedProcess[str]:
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
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                f"--window-size={max(width, 500)},2400",
                "--virtual-time-budget=10000",
                *mode,
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )


def _console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _probe(page: Path, width: int, tmp_path: Path) -> dict[str, Any]:
    probed = tmp_path / f"probed-{width}.html"
    probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    result = _chromium(_framed(probed, width), width, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console_messages(result.stderr) == []
    found = re.search(r'<pre id="probe">(.+?)</pre>', result.stdout, re.S)
    assert found, result.stdout[-2000:]
    text = found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    return json.loads(text.replace("&amp;", "&"))  # type: ignore[no-any-return]


@needs_chromium
@pytest.mark.parametrize("width", [1400, 390])
def test_dashboard_in_chromium(html_report: Path, tmp_path: Path, width: int) -> None:
    # The page as it is: no console errors, a screenshot that is not blank.
    shot = tmp_path / f"report-{width}.png"
    result = _chromium(_framed(html_report, width), width, f"--screenshot={shot}")
    assert result.returncode == 0 and _console_messages(result.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

    r = _probe(html_report, width, tmp_path)
    assert r["title"] == "tokenmeter report"  # no injected script ran
    # No horizontal overflow: wide tables scroll inside their own box, nothing else sticks out.
    assert r["innerWidth"] == width and r["scrollWidth"] <= width, r
    assert r["outside"] == []
    # The daily chart: one column per day, the exact cost on it, heights in proportion.
    assert Decimal(r["top"]) == Decimal("1.5")  # nice ticks over a $1.28 peak, not $5
    assert r["yLabels"] == ["$0.00", "$0.25", "$0.50", "$0.75", "$1.00", "$1.25", "$1.50"]
    assert {day: Decimal(cost) for day, cost, _, _ in r["days"]} == DAYS
    for _, cost, height, segments in r["days"]:
        assert height == pytest.approx(
            r["plotHeight"] * float(Decimal(cost) / Decimal("1.5")), abs=1.5
        )
        assert sum(Decimal(c) for _, c, _ in segments) == Decimal(cost)
    assert min(r["axisFont"]) >= 12  # readable at both widths
    # Cost by model: bars largest first, widths in proportion to their cost.
    models = {label: Decimal(cost) for label, cost, _, _ in r["models"]}
    assert models["openai/gpt-4o-mini"] == Decimal("1.234567890123")
    assert models[f"openai/{EVIL_MODEL}"] == Decimal("0.15")
    top_width = r["models"][0][2]
    for _, cost, bar_width, _ in r["models"]:
        expected = top_width * float(Decimal(cost) / Decimal("1.234567890123"))
        assert bar_width == pytest.approx(expected, abs=1.5)
    assert len(set(r["sessions"])) == len(r["sessions"])  # top sessions tell apart
    # A chart per tag key, with the exact cost of each value and of the calls without it.
    tags = {key: {label: Decimal(cost) for label, cost, _ in bars} for key, bars in r["tags"]}
    assert tags == {
        "feature": {
            "chat": CHAT_COST,
            EVIL_TAG: Decimal("0.15"),
            "search": Decimal("0.00185"),
            "(no feature tag)": Decimal("0.000125"),
        },
        "team": {
            "core": Decimal("0.00185"),
            "(no team tag)": sum(DAYS.values()) - Decimal("0.00185"),
        },
        LONG_KEY: {
            "v": Decimal("0.05"),
            f"(no {LONG_KEY} tag)": sum(DAYS.values()) - Decimal("0.05"),
        },
    }
    for _, bars in r["tags"]:
        widest = max(width for _, _, width in bars)
        top = max(Decimal(cost) for _, cost, _ in bars)
        for _, cost, bar_width in bars:
            assert bar_width == pytest.approx(widest * float(Decimal(cost) / top), abs=1.5)
    # The sortable table sorts by the number, both ways.
    desc = [float(v) for v in r["sortedDesc"]]  # an unpriced row sorts as -Infinity
    assert desc == sorted(desc, reverse=True) and r["sortedAsc"] == r["sortedDesc"][::-1]


@needs_chromium
def test_chromium_check_catches_page_errors_and_overflow(tmp_path: Path) -> None:
    """The harness can fail: a page that throws is reported, and an overflow is measured."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><main><div style='width:2000px'>wide</div>"
        "<table><thead><tr><th>Cost</th></tr></thead><tbody></tbody></table></main>"
        "<script>missingFunction()</script></body>"
    )
    probe = (
        "<script>parent.postMessage(JSON.stringify({scrollWidth: "
        "document.documentElement.scrollWidth, innerWidth: window.innerWidth}), '*')</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(bad.read_text().replace("</body>", probe + "</body>"))
    result = _chromium(_framed(probed, 390), 390, "--dump-dom")
    assert any("missingFunction" in line for line in _console_messages(result.stderr))
    found = re.search(r'<pre id="probe">(.+?)</pre>', result.stdout, re.S)
    assert found, result.stdout[-2000:]
    measured = json.loads(found.group(1).replace("&quot;", '"'))
    assert measured["innerWidth"] == 390 and measured["scrollWidth"] > 390


_COLUMNS_PROBE = """
<script>
(function () {
  var cols = document.querySelectorAll("#chart-daily .col");
  parent.postMessage(JSON.stringify({
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    heading: document.querySelector("#chart-daily").previousElementSibling.textContent,
    xLabels: [].filter.call(document.querySelectorAll("#chart-daily .xaxis span"), function (s) {
      return s.textContent;
    }).map(function (s) {
      var range = document.createRange();
      range.selectNodeContents(s);
      var box = range.getBoundingClientRect();
      return [s.textContent, box.left, box.right];
    }),
    cols: [].map.call(cols, function (c) {
      return [c.getAttribute("data-day"), c.getAttribute("data-cost"),
              c.getBoundingClientRect().width, c.firstElementChild.getBoundingClientRect().height];
    })
  }), "*");
})();
</script>
"""


def _probed(page: Path, width: int) -> dict[str, Any]:
    """What ``_COLUMNS_PROBE`` finds in ``page`` shown in Chromium ``width`` px wide, after
    checking that it loads without a console message and never scrolls sideways."""
    probed = page.with_name(f"probed-{width}.html")
    probed.write_text(page.read_text().replace("</body>", _COLUMNS_PROBE + "</body>"))
    result = _chromium(_framed(probed, width), width, "--dump-dom")
    assert result.returncode == 0 and _console_messages(result.stderr) == []
    found = re.search(r'<pre id="probe">(.+?)</pre>', result.stdout, re.S)
    assert found, result.stdout[-2000:]
    r: dict[str, Any] = json.loads(found.group(1).replace("&quot;", '"'))
    assert r["scrollWidth"] <= r["innerWidth"] == width, r["scrollWidth"]
    return r


@needs_chromium
def test_a_daily_chart_of_years_of_calls_is_drawn_within_the_page(
    cli: RunCli, tmp_path: Path
) -> None:
    """Two years of daily calls made 730 columns 2 px apart: each 0 px wide (a blank chart, at
    1400 px too) and the page scrolled sideways at 390 px. More days than the chart can draw are
    drawn by week, then by month (as ``--by month`` totals them), every column visible."""
    first = date(2025, 1, 1)
    records = [
        rec(i, f"{first + timedelta(days=i)}T10:00:00.000Z", "openai", f"m{i % 3}", 10, 10,
            f"0.0{1 + i % 9}")
        for i in range(730)
    ]  # fmt: skip
    db = write_sqlite(tmp_path / "usage.db", records, [])
    code, out, err = cli("report", "--source", str(db), "--by", "month", "--format", "json")
    assert code == 0, err
    months = {row["month"]: Decimal(str(row["cost_usd"])) for row in json.loads(out)["rows"]}
    page = tmp_path / "report.html"
    code, _, err = cli("report", "--source", str(db), "-o", str(page))
    assert code == 0, err
    for width in (1400, 390):
        r = _probed(page, width)
        assert r["heading"] == "Cost per month by model"
        assert {day: Decimal(cost) for day, cost, _, _ in r["cols"]} == months
        assert min(col_width for _, _, col_width, _ in r["cols"]) >= 1
        assert min(height for _, _, _, height in r["cols"]) > 0
        labels = r["xLabels"]  # month names under the chart, side by side, none over another
        assert labels[0][0] == "2025-01" and len(labels) >= 3
        assert all(a[2] <= b[1] for a, b in itertools.pairwise(labels)), labels


@needs_chromium
def test_long_names_never_push_the_page_sideways(cli: RunCli, tmp_path: Path) -> None:
    """A model or provider name of 300 characters (a Bedrock ARN is a hundred) made the daily
    chart's legend 2,500 px wide: the page scrolled sideways at 390 and at 1400 px. Every name
    in every part of the page wraps, is cut with an ellipsis or scrolls inside its table."""
    long = "x" * 300
    records = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", f"m{long}", 10, 10, "1.00",
            session=(f"s{long}", f"n{long}"), tags={f"k{long}": f"v{long}"}),
        rec(2, "2026-11-02T10:00:00.000Z", f"p{long}", "b", 10, 10, "0.5", status="error",
            error=f"E{long}"),
    ]  # fmt: skip
    db = write_sqlite(tmp_path / "usage.db", records, [])
    page = tmp_path / "report.html"
    code, _, err = cli(
        "report", "--source", str(db), "--model", f"m{long}", "--model", "b", "-o", str(page)
    )
    assert code == 0, err
    for width in (1400, 390):
        r = _probed(page, width)
        assert len(r["cols"]) == 2


def test_the_daily_legend_names_only_the_models_drawn(cli: RunCli, tmp_path: Path) -> None:
    """The legend named every model with a call in the chart's days, so a model whose calls were
    all unpriced or refunds (never drawn: no cost above 0) had a colour that appears nowhere."""
    records = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", "paid", 10, 10, "1.00"),
        rec(2, "2026-11-01T11:00:00.000Z", "openai", "refunded", 10, 10, "-0.50"),
        rec(3, "2026-11-02T11:00:00.000Z", "openai", "unpriced", 10, 10, None),
    ]
    db = write_sqlite(tmp_path / "usage.db", records, [])
    code, page, err = cli("report", "--source", str(db), "--format", "html")
    assert code == 0, err
    legend = re.search(r'<div class="legend">(.*?)</div>', page)
    assert legend, page
    drawn = set(re.findall(r'class="seg" style="[^"]*" data-label="([^"]*)"', page))
    assert drawn == {"openai/paid"}
    assert re.findall(r"</i>([^<]*)</span>", legend.group(1)) == ["openai/paid"]


_TILES_AND_SORT = """
<script>
(function () {
  function box(e) { return e.getBoundingClientRect(); }
  var r = {};
  r.spilled = [].filter.call(document.querySelectorAll(".card b"), function (b) {
    return box(b).right > box(b.closest(".card")).right + 0.5 || b.scrollWidth > b.clientWidth;
  }).map(function (b) { return b.textContent; });
  var table = document.querySelector("#main-table table");
  function days() {
    return [].map.call(table.tBodies[0].rows, function (row) { return row.cells[0].textContent; });
  }
  var button = table.tHead.rows[0].cells[0].querySelector("button");
  button.click();
  r.down = days();
  button.click();
  r.up = days();
  parent.postMessage(JSON.stringify(r), "*");
})();
</script>
"""


@needs_chromium
@pytest.mark.parametrize("width", [1400, 390])
def test_huge_totals_stay_in_their_tiles_and_days_sort_as_dates(
    cli: RunCli, tmp_path: Path, width: int
) -> None:
    """12 billion tokens ran out of the "Total tokens" tile under the next one; clicking the day
    column sorted nothing (parseFloat read every "2026-11-0x" as 2026)."""
    records = [
        rec(n, f"2026-11-0{day}T10:00:00.000Z", "openai", "gpt-4o-mini", 4_000_000_000, 2_000, "1")
        for n, day in enumerate((3, 1, 2))
    ]
    source = write_sqlite(tmp_path / "usage.db", records, [])
    page = tmp_path / "report.html"
    code, _, err = cli(
        "report", "--source", str(source), "--by", "day", "--since", "2026-11-01", "-o", str(page)
    )
    assert code == 0, err
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", _TILES_AND_SORT + "</body>"))
    result = _chromium(_framed(probed, width), width, "--dump-dom")
    assert result.returncode == 0 and _console_messages(result.stderr) == []
    found = re.search(r'<pre id="probe">(.+?)</pre>', result.stdout, re.S)
    assert found, result.stdout[-2000:]
    r = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert r["spilled"] == []
    assert r["down"] == ["2026-11-03", "2026-11-02", "2026-11-01"]
    assert r["up"] == ["2026-11-01", "2026-11-02", "2026-11-03"]


def test_a_table_of_very_many_rows_shows_the_first_and_says_so(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100,000 sessions made a 50 MB page that Chromium took 107 s to show: a table holds the
    first rows (here 3) and says how many there are; the totals still count every one."""
    from tokenmeter.cli.reports import _html

    monkeypatch.setattr(_html, "_MAX_ROWS", 3)
    records = [
        rec(
            n, f"2026-11-01T10:00:0{n}.000Z", "openai", "gpt-4o", 1, 1, "0.5", session=(f"s{n}", "")
        )
        for n in range(5)
    ]
    source = write_sqlite(tmp_path / "usage.db", records, [])
    code, page, err = cli(
        "report", "--source", str(source), "--by", "session", "--detailed", "--format", "html"
    )
    assert code == 0, err
    main = page.split('<div id="main-table">')[1].split("</table>")[0]
    assert main.split("<tbody>")[1].split("</tbody>")[0].count("<tr>") == 3
    assert "The first 3 of 5 rows" in page and "The first 3 of 5 calls" in page
    assert "$2.50" in main.split("<tfoot>")[1]  # the total counts all five


@pytest.mark.parametrize("suffix", ["db", "jsonl"])
def test_each_grouping_is_read_once(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """The HTML report asks for ``model`` beside the default ``--by model``: the two were each
    a scan of the window (and a ranking of its latencies). Read once, the page is the same,
    and each table keeps rows of its own."""
    path = tmp_path / f"usage.{suffix}"
    timed = [r.model_copy(update={"latency_ms": 100.0 + i}) for i, r in enumerate(RECORDS)]
    if suffix == "db":
        write_sqlite(path, timed, SESSIONS)
    else:
        write_jsonl(path, timed)
    asked: list[tuple[Any, ...]] = []
    for runner in ("_run_sqlite", "_run_jsonl"):
        run = getattr(_query, runner)

        def spy(source: Any, query: Any, *rest: Any, run: Any = run) -> Any:
            asked.extend(query.groupings)
            return run(source, query, *rest)

        monkeypatch.setattr(_query, runner, spy)
    source = resolve_source(str(path))
    by_model = (parse_dimension("model"),)
    query = _query.Query(groupings=(by_model, by_model), latency=True)
    report = _query.run_query(source, query)
    assert asked == [by_model]
    first, again = report.breakdowns
    assert first == again and any(row.latency is not None for row in first.rows)
    assert all(a.totals is not b.totals for a, b in zip(first.rows, again.rows, strict=True))
    page = tmp_path / "r.html"
    code, _, err = cli("report", "--source", str(path), "--format", "html", "-o", str(page))
    assert code == 0, err
    assert asked.count(by_model) == 2  # the window and the one before it (the comparison)


def _sessions_to_rank() -> list[Any]:
    """60 sessions whose costs tie, or are $0 or unknown, in groups of calls that tie too: the
    order among them rests on each rule of the sort (cost, then calls, then the key)."""
    records = []
    for n in range(120):
        cost = (None, "0", "0.5", "0.25", "1.25")[n % 5]
        session = (f"s-{(n * 7) % 60:02d}", f"name-{n % 4}")
        when = f"2026-11-0{1 + n % 5}T10:00:{n % 60:02d}.000Z"
        records.append(rec(n, when, "openai", "gpt-4o", 10 + n % 3, 1, cost, session=session))
    return records


@pytest.mark.parametrize("suffix", ["db", "jsonl"])
def test_a_charts_first_rows_alone_are_made_and_are_the_first_of_all(
    cli: RunCli, tmp_path: Path, suffix: str
) -> None:
    """The HTML page's session and name charts, and the weekly report's top sessions, show a
    grouping's first rows: only those are made rows (a store of a session per call made
    millions), and they are the first rows of the whole grouping, ties and unknown costs
    ranked alike. The main table (``--by session``) still has every row."""
    path = tmp_path / f"usage.{suffix}"
    records = _sessions_to_rank()
    if suffix == "db":
        write_sqlite(path, records, [])
    else:
        write_jsonl(path, records)
    source = resolve_source(str(path))
    by_model, by_session, by_name = (
        (parse_dimension(spec),) for spec in ("model", "session", "name")
    )
    whole = _query.run_query(source, _query.Query(groupings=(by_model, by_session, by_name)))
    short = _query.run_query(
        source,
        _query.Query(
            groupings=(by_model, by_session, by_name), shortlists={by_session: 7, by_name: 2}
        ),
    )
    assert len(whole.breakdowns[1].rows) == 60 and len(whole.breakdowns[2].rows) == 4
    assert short.breakdowns[1].rows == whole.breakdowns[1].rows[:7]
    assert short.breakdowns[2].rows == whole.breakdowns[2].rows[:2]
    assert short.totals == whole.totals and short.breakdowns[0] == whole.breakdowns[0]
    main = _query.run_query(
        source, _query.Query(groupings=(by_session, by_name), shortlists={by_session: 7})
    )
    assert main.breakdowns[0].rows == whole.breakdowns[1].rows  # the main table: every row
    page = tmp_path / "r.html"
    code, _, err = cli("report", "--source", str(path), "--format", "html", "-o", str(page))
    assert code == 0, err
    chart = page.read_text().split('id="chart-sessions"')[1].split("</div></div>")[0]
    first = whole.breakdowns[1].rows[0].key[0]
    assert first in chart
