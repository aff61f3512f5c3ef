"""``tokenmeter demo``: the offline first run.

It starts ``FakeProvider`` (a loopback server that speaks the OpenAI, Anthropic and Gemini APIs),
instruments the installed SDKs with ``tokenmeter.instrument()``, makes a few ordinary calls in two
named sessions, flushes to the file sinks of its own directory and prints the report of this run.
With ``--live`` the same calls go to the real providers whose API keys are set.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenmeter._config import FILE_SINK_NAMES, load_settings_with_sources
from tokenmeter.cli._errors import CliError
from tokenmeter.cli._source import DEMO_DIR, DEMO_STATE_FILE
from tokenmeter.sinks._files import ensure_private_dir

__all__ = ["run_demo"]

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"
GEMINI_MODEL = "gemini-2.5-flash"
_PROMPT = "In one sentence: why meter LLM costs?"

_KEYS = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "google-genai": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "google-generativeai": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
_MODULES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google-genai": "google.genai",
    "google-generativeai": "google.generativeai",
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # "google" itself missing
        return False


# --- one small conversation per SDK: (chat call, streamed call) --------------------------------


def _openai_calls(client: Any, feature: str) -> None:
    if feature == "chat":
        client.chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": _PROMPT}], max_tokens=40
        )
        stream = client.chat.completions.create(
            model=OPENAI_MODEL,
            messages=[{"role": "user", "content": _PROMPT}],
            max_tokens=40,
            stream=True,
        )
        for _ in stream:
            pass
    else:
        client.embeddings.create(model="text-embedding-3-small", input="cost metering")
        client.responses.create(model=OPENAI_MODEL, input=_PROMPT, max_output_tokens=40)


def _anthropic_calls(client: Any, feature: str) -> None:
    messages = [{"role": "user", "content": _PROMPT}]
    client.messages.create(model=ANTHROPIC_MODEL, max_tokens=40, messages=messages)
    if feature == "chat":
        with client.messages.stream(
            model=ANTHROPIC_MODEL, max_tokens=40, messages=messages
        ) as stream:
            for _ in stream.text_stream:
                pass


def _genai_calls(client: Any, feature: str) -> None:
    client.models.generate_content(model=GEMINI_MODEL, contents=_PROMPT)
    if feature == "chat":
        for _ in client.models.generate_content_stream(model=GEMINI_MODEL, contents=_PROMPT):
            pass


def _generativeai_calls(_client: Any, feature: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import google.generativeai as legacy

    model = legacy.GenerativeModel(GEMINI_MODEL)  # type: ignore[attr-defined]
    model.generate_content(_PROMPT)
    if feature == "chat":
        for _ in model.generate_content(_PROMPT, stream=True):
            pass


_CALLS: dict[str, Callable[[Any, str], None]] = {
    "openai": _openai_calls,
    "anthropic": _anthropic_calls,
    "google-genai": _genai_calls,
    "google-generativeai": _generativeai_calls,
}


def _fake_clients(fake: Any, providers: list[str]) -> dict[str, Any]:
    makers: dict[str, Callable[[], Any]] = {
        "openai": fake.openai_client,
        "anthropic": fake.anthropic_client,
        "google-genai": fake.genai_client,
        "google-generativeai": lambda: fake.configure_generativeai(),
    }
    return {name: makers[name]() for name in providers}


def _live_clients(providers: list[str]) -> dict[str, Any]:
    clients: dict[str, Any] = {}
    for name in providers:
        if name == "openai":
            import openai

            clients[name] = openai.OpenAI()
        elif name == "anthropic":
            import anthropic

            clients[name] = anthropic.Anthropic()
        elif name == "google-genai":
            from google import genai

            clients[name] = genai.Client()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                import google.generativeai as legacy

            key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
            legacy.configure(api_key=key)  # type: ignore[attr-defined]
            clients[name] = None
    return clients


def _has_key(provider: str) -> bool:
    return any(os.environ.get(key) for key in _KEYS[provider])


def _run_sessions(clients: dict[str, Any]) -> int:
    """Two named sessions with tags; returns how many provider conversations failed."""
    import tokenmeter

    failures = 0
    for session_name, feature in (("demo-chat", "chat"), ("demo-search", "search")):
        with tokenmeter.session(session_name, tags={"feature": feature, "source": "demo"}):
            for provider, client in clients.items():
                try:
                    _CALLS[provider](client, feature)
                except Exception as exc:  # one SDK failing must not hide the others' results
                    failures += 1
                    print(
                        f"tokenmeter demo: {provider} {feature} call failed: "
                        f"{type(exc).__name__}: {exc}",
                        file=sys.stderr,
                    )
    return failures


def _same_directory(one: Path, other: Path) -> bool:
    """The same folder, through a link too, or the same place while either does not exist yet:
    the demo's directory must never be the application's, whose records it would join."""
    try:
        return os.path.samefile(one, other)
    except OSError:  # one of them not made yet (or not to be looked at): compare the paths
        try:
            return one.resolve() == other.resolve()
        except (OSError, RuntimeError):  # RuntimeError: a loop of links (Python 3.11, 3.12)
            return False


def _report_source(directory: Path) -> Path:
    for name in ("usage.db", "usage.jsonl"):
        if (directory / name).exists():
            return directory / name
    raise CliError(f"the demo recorded nothing in {directory} (see the errors above)")


def run_demo(args: argparse.Namespace) -> int:
    import tokenmeter

    try:  # a bad setting (TOKENMETER_*, pyproject.toml)
        configured, sources = load_settings_with_sources()
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None
    if configured.disabled:  # else the calls run unmetered and the sinks take the blame
        raise CliError(
            f"tokenmeter is disabled ({sources['disabled']}): the demo would record nothing",
            exit_code=2,
        )
    # Only the SDKs that instrument() meters (the providers setting): a call through another
    # would go unmetered, and with --live be paid for without a record.
    wanted = configured.providers
    providers = [
        name
        for name, module in _MODULES.items()
        if (wanted is None or name in wanted) and _installed(module)
    ]
    if args.live:
        providers = [name for name in providers if _has_key(name)]
        if not providers:
            raise CliError(
                "--live needs an installed SDK and its key: OPENAI_API_KEY, ANTHROPIC_API_KEY "
                "or GEMINI_API_KEY"
            )
    if not providers:
        if wanted is not None:
            raise CliError(
                f"no SDK of the providers metered here ({', '.join(wanted)}, from "
                f"{sources['providers']}) is installed"
            )
        raise CliError("no provider SDK installed: pip install '.[all]' in a tokenmeter checkout")

    directory = Path(args.dir or DEMO_DIR)
    if _same_directory(directory, configured.directory):
        raise CliError(
            f"{'--dir ' if args.dir else ''}{directory} is your data directory (the directory "
            f"setting, from {sources['directory']}): the demo would add its fake calls to your "
            "records; pass another --dir",
            exit_code=2,
        )
    try:  # else the sinks fail call after call, and the demo waits for them to give up
        ensure_private_dir(directory)  # owner-only, missing parents too, as the sinks make theirs
        directory.mkdir(exist_ok=True)  # a file there: FileExistsError
    except OSError as exc:
        raise CliError(
            f"--dir {directory}: cannot record there ({exc.strerror or exc})", exit_code=2
        ) from None
    # Fake calls never go into the application's data: only the sinks that write into the
    # demo's directory are kept (not the team's PostgreSQL database or OTel collector), with
    # SQLite to report from if neither it nor JSONL is among them, and a workflow state file is
    # kept there too.
    sinks = [name for name in configured.sinks if name in FILE_SINK_NAMES]
    if "sqlite" not in sinks and "jsonl" not in sinks:  # the report reads one of them
        sinks.append("sqlite")
    try:
        tokenmeter.configure(
            directory=directory,
            sinks=sinks,
            state_file=None if configured.state_file is None else directory / DEMO_STATE_FILE,
        )
    except ValueError as exc:  # a prices file that became unreadable since
        raise CliError(str(exc), exit_code=2) from None
    started = datetime.now(UTC)
    instrumentation = tokenmeter.instrument()
    try:
        if args.live:
            failures = _run_sessions(_live_clients(providers))
        else:
            from tokenmeter.testing import FakeProvider

            with FakeProvider() as fake:
                failures = _run_sessions(_fake_clients(fake, providers))
        tokenmeter.flush()
    finally:
        instrumentation.uninstrument()

    print(f"tokenmeter demo: {', '.join(providers)} -> {directory}/", file=sys.stderr)
    from tokenmeter.cli import main

    source = _report_source(directory)
    code = main(
        [
            "report",
            "--source",
            str(source),
            "--since",
            started.strftime("%Y-%m-%dT%H:%M:%S"),
            "--by",
            "model",
            *(["--format", args.format] if args.format else []),
        ]
    )
    # Every command named here reads the demo's data (the defaults read the application's), and
    # is quoted as a shell takes it: --dir may hold a space.
    where = shlex.quote(str(source))
    print(
        f"\nNext: tokenmeter report --by session --source {where}   "
        f"(or: tokenmeter sessions --source {where}, "
        f"tokenmeter report --source {where} -o report.html)",
        file=sys.stderr,
    )
    return code or (1 if failures == len(providers) * 2 else 0)
