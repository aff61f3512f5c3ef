"""How long ``import tokenmeter`` takes in a fresh interpreter.

    python benchmarks/bench_import.py [--quick] [--runs 10]

Each run is a new ``python -c`` child that times the import with ``time.perf_counter()`` (the
interpreter's own start-up is not counted). The children run in an empty temporary folder (no
pyproject.toml found) with a bytecode cache of their own (``PYTHONPYCACHEPREFIX``, filled by a
first run that is not counted: an installed package has its .pyc files), so nothing is written
into the checkout. Medians of the runs.

Target: ``import tokenmeter`` <= 50 ms. For information: ``import tokenmeter;
tokenmeter.instrument()`` (SDKs are patched when the application imports them, so this imports
none), ``import openai`` for scale, and the modules that cost most (``python -X importtime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import VERDICTS, describe, verdict

TIMED = (
    "import time; _t = time.perf_counter(); {statement}; "
    "print(time.perf_counter() - _t); import sys; "
    "print(sorted(m for m in sys.modules if m.split('.')[0] in {{'openai', 'anthropic', "
    "'google', 'pydantic', 'sqlite3', 'genai_prices', 'wrapt'}} and '.' not in m))"
)
STATEMENTS = {
    "import tokenmeter": "import tokenmeter",
    "import tokenmeter; tokenmeter.instrument()": "import tokenmeter; tokenmeter.instrument()",
    "import openai (for scale)": "import openai",
}


def child(code: str, cwd: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *extra, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


def importtime(cwd: Path, env: dict[str, str], code: str) -> list[tuple[int, int, str]]:
    """``python -X importtime -c code``: (self us, cumulative us, module with its indent) rows."""
    err = child(code, cwd, env, "-X", "importtime").stderr
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line.removeprefix("import time:").split("|")
        try:
            rows.append((int(parts[0]), int(parts[1]), parts[2].rstrip()))
        except ValueError:
            continue  # the header line
    return rows


def depth(module: str) -> int:
    return len(module) - len(module.lstrip())


def under_tokenmeter(rows: list[tuple[int, int, str]]) -> tuple[int, list[tuple[int, int, str]]]:
    """The rows ``import tokenmeter`` loaded (a module's line follows its children's lines), and
    the row index of tokenmeter itself."""
    top = next(i for i, row in enumerate(rows) if row[2].strip() == "tokenmeter")
    level = depth(rows[top][2])
    start = top
    while start > 0 and depth(rows[start - 1][2]) > level:
        start -= 1
    return top, rows[start : top + 1]


def show(title: str, rows: list[tuple[int, int, str]], top: int) -> None:
    print(f"\n  {title} (python -X importtime, one run, us):")
    print(f"  {'cumulative':>10}{'self':>8}  module")
    for own, cumulative, module in sorted(rows, key=lambda row: -row[1])[:top]:
        print(f"  {cumulative:>10}{own:>8}  {module}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs each (a smoke run)")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    work = Path(tempfile.mkdtemp(prefix="tokenmeter-import-"))
    cwd = work / "app"
    cwd.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOKENMETER_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    env["TOKENMETER_DIR"] = str(work / "records")  # nothing is written, but never in the cwd
    print(describe())
    print(f"{runs} fresh interpreters each, medians")
    print(f"\n  {'statement':<46}{'median':>9}{'min':>9}{'max':>9}")
    medians: dict[str, float] = {}
    for label, statement in STATEMENTS.items():
        code = TIMED.format(statement=statement)
        child(code, cwd, env)  # fills the bytecode cache
        seconds: list[float] = []
        modules = ""
        for _ in range(runs):
            out = child(code, cwd, env).stdout.splitlines()
            seconds.append(float(out[0]))
            modules = out[1]
        medians[label] = statistics.median(seconds)
        print(
            f"  {label:<46}{medians[label] * 1e3:>7.1f}ms{min(seconds) * 1e3:>7.1f}ms"
            f"{max(seconds) * 1e3:>7.1f}ms   loaded: {modules}"
        )
    took = medians["import tokenmeter"] * 1e3
    print(verdict("5 import tokenmeter", took <= 50, f"{took:.1f} ms (target <= 50 ms)"))

    _, rows = under_tokenmeter(importtime(cwd, env, "import tokenmeter"))
    show("what `import tokenmeter` loads, slowest first", rows, 12)
    rows = importtime(cwd, env, "import tokenmeter; tokenmeter.instrument()")
    after = rows[under_tokenmeter(rows)[0] + 1 :]
    show("what `tokenmeter.instrument()` then loads, slowest first", after, 12)
    print("\n== summary ==")
    print("\n".join(VERDICTS))


if __name__ == "__main__":
    main()
