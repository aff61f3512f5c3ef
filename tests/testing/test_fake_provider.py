"""FakeProvider itself: lifecycle, configuration errors, the request log, routing and framing."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers import one_line_value_error

import tokenmeter
from tokenmeter.testing import FakeProvider, InMemorySink, OpenAIUsage

REPO = Path(__file__).resolve().parents[2]


def test_package_exports_in_memory_sink() -> None:
    from tokenmeter.sinks.memory import InMemorySink as Original

    assert InMemorySink is Original


def test_start_stop_and_context_manager() -> None:
    fake = FakeProvider().start()
    assert fake.url.startswith("http://127.0.0.1:")
    assert fake.openai_base_url == fake.url + "/v1"
    assert fake.start() is fake  # idempotent
    fake.stop()
    fake.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url


def test_stop_drops_keep_alive_connections() -> None:
    with FakeProvider() as fake:
        client = fake.openai_client()
        assert client.chat.completions.create(model="m", messages=[]).usage is not None
    # The pooled connection must not keep being served after stop().
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=[])


def test_keep_alive_serves_many_requests_on_one_connection(fake: FakeProvider) -> None:
    host, port = fake.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    body = json.dumps({"model": "gpt-4o", "messages": [], "stream": True})
    for _ in range(3):
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        response = conn.getresponse()
        assert response.getheader("transfer-encoding") == "chunked"
        assert response.read().endswith(b"data: [DONE]\n\n")
    conn.request("POST", "/v1/embeddings", json.dumps({"model": "e", "input": "x"}))
    response = conn.getresponse()
    assert int(response.getheader("content-length") or 0) == len(response.read())
    conn.close()


def test_chunked_request_bodies_are_read(fake: FakeProvider) -> None:
    host, port = fake.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    parts = [b'{"model": "gpt-4o", ', b'"messages": []}']
    conn.request("POST", "/v1/chat/completions", iter(parts), encode_chunked=True)
    assert json.loads(conn.getresponse().read())["model"] == "gpt-4o-2024-08-06"
    conn.close()


def test_request_log_keeps_no_headers_or_keys(fake: FakeProvider) -> None:
    client = fake.openai_client(api_key="sk-secret-value")
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert "sk-secret-value" not in repr(request)
    fake.clear_requests()
    assert fake.requests == []


def test_request_log_can_be_switched_off() -> None:
    with FakeProvider(record_requests=False) as fake:
        fake.openai_client().chat.completions.create(model="gpt-4o", messages=[])
        assert fake.requests == []


def test_unknown_route_is_a_provider_shaped_404(fake: FakeProvider) -> None:
    client = fake.openai_client()
    with pytest.raises(openai.NotFoundError, match="no route"):
        client.get("/nope", cast_to=object)


def test_fail_next_counts_and_then_recovers(fake: FakeProvider) -> None:
    client = fake.openai_client()
    fake.fail_next(status=503, count=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o", messages=[])
    assert client.chat.completions.create(model="gpt-4o", messages=[]).usage is not None


def test_fail_next_for_ever_costs_no_memory(fake: FakeProvider) -> None:
    """A count meaning 'always' (sys.maxsize) is one entry, not a list of that many failures."""
    client = fake.openai_client()
    fake.fail_next(status=429, count=sys.maxsize, message="slow down")
    fake.fail_next(status=500, count=10**12)
    for _ in range(3):
        with pytest.raises(openai.RateLimitError, match="slow down"):
            client.chat.completions.create(model="gpt-4o", messages=[])


def test_set_usage_and_models(fake: FakeProvider) -> None:
    fake.set_usage(
        openai={
            "prompt_tokens": 100,
            "completion_tokens": 1,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
        }
    )
    fake.set_usage(openai=OpenAIUsage(prompt_tokens=5, completion_tokens=5), model="special")
    fake.set_model("special", "special-2025")
    client = fake.openai_client()
    default = client.chat.completions.create(model="gpt-4o-mini", messages=[])
    special = client.chat.completions.create(model="special", messages=[])
    assert default.usage is not None and default.usage.prompt_tokens == 100
    assert default.model == "gpt-4o-mini-2024-07-18"
    assert special.usage is not None and special.usage.total_tokens == 10
    assert special.model == "special-2025"
    assert fake.openai_usage.prompt_tokens == 100


def test_usage_given_as_a_dict_reports_those_counts_and_no_others(fake: FakeProvider) -> None:
    """docs/testing.md's ``set_usage(openai={"prompt_tokens": 120, "completion_tokens": 30})``:
    the counts left out kept the fake's defaults, so Anthropic's input_tokens=100 came back with
    50 cache reads and 100 cache writes beside it (recorded as 250 input tokens)."""
    sink = InMemorySink()
    tokenmeter.instrument()
    tokenmeter.configure(sinks=[sink])
    fake.set_usage(
        openai={"prompt_tokens": 120, "completion_tokens": 30},
        anthropic={"input_tokens": 100, "output_tokens": 10},
        gemini={"prompt": 7, "candidates": 3},
    )
    fake.openai_client().chat.completions.create(model="gpt-4o", messages=[])
    fake.anthropic_client().messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[])
    genai = fake.genai_client()  # kept: the client closes its connection when collected
    genai.models.generate_content(model="gemini-2.5-flash", contents="hi")
    tokenmeter.flush()
    counts = {
        r.model_provider: (r.input_tokens, r.output_tokens, r.cache_read_tokens, r.reasoning_tokens)
        for r in sink.records
    }
    assert counts == {
        "openai": (120, 30, 0, 0),
        "anthropic": (100, 10, 0, 0),
        "google": (7, 3, 0, 0),
    }
    assert fake.anthropic_usage.service_tier == "standard"  # not a count: its default stays


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 70_000}, "port"),
        ({"port": -1}, "port"),
        ({"port": "8080"}, "port"),
        ({"port": 10**5000}, "port"),
        ({"host": 5}, "host"),
        ({"host": ""}, "host"),
    ],
)
def test_a_bad_host_or_port_is_a_value_error_naming_it(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FakeProvider(**kwargs).start()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.set_usage(openai={"prompt": 1}), "openai: unknown field"),
        (lambda f: f.set_usage(gemini=[1]), "gemini must be a GeminiUsage"),
        (lambda f: f.set_usage(gemini_function_call={}, model="m"), "gemini_function_call"),
        (lambda f: f.fail_next(status=200), "status"),
        (lambda f: f.fail_next(count=0), "count"),
        (lambda f: f.fail_next(message=5), "message"),
        (lambda f: setattr(f, "stream_chunks", 0), "stream_chunks"),
        (lambda f: f.set_model("", "x"), "request_model"),
    ],
)
def test_bad_configuration_raises_value_error(
    fake: FakeProvider, call: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call(fake)  # type: ignore[operator]


def _deep() -> dict[str, Any]:
    """A dict nested deeper than ``repr()`` can go."""
    nested: dict[str, Any] = {}
    for _ in range(5_000):
        nested = {"a": nested}
    return nested


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (lambda: {"models": ["gpt-4o"]}, "models"),
        (lambda: {"models": {"gpt-4o": _deep()}}, "response_model"),
        (lambda: {"stream_chunks": _deep()}, "stream_chunks"),
        (lambda: {"openai_usage": {"prompt_tokens": _deep()}}, "prompt_tokens"),
        (lambda: {"openai_usage": "x" * 1_000_000}, "openai"),
        (lambda: {"anthropic_usage": {"x" * 1_000_000: 1}}, "anthropic"),
    ],
    ids=["models-list", "deep-model", "deep-chunks", "deep-count", "1mb-usage", "1mb-field"],
)
def test_a_bad_argument_is_named_in_one_short_line(
    kwargs: Callable[[], dict[str, Any]], field: str
) -> None:
    """``models=["gpt-4o"]`` raised AttributeError, a deeply nested value RecursionError (from
    ``repr()`` in the message), and a megabyte was quoted whole in the ValueError."""
    with pytest.raises(ValueError, match=field) as excinfo:
        FakeProvider(**kwargs())
    assert len(one_line_value_error(excinfo)) < 300


def test_environ_points_a_subprocess_sdk_at_the_fake(fake: FakeProvider) -> None:
    script = textwrap.dedent(
        """
        import openai
        r = openai.OpenAI(max_retries=0).chat.completions.create(model="gpt-4o", messages=[])
        print(r.usage.total_tokens)
        """
    )
    env = {**os.environ, **fake.environ()}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "29"
    assert fake.requests[-1].path == "/v1/chat/completions"


def test_the_fakes_environ_keeps_its_clients_off_an_http_proxy(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind an HTTP proxy (a corporate runner: ``HTTP(S)_PROXY`` set, ``NO_PROXY`` without the
    loopback address) every call to the fake went to the proxy, which cannot reach it: its
    ``environ()`` (the ``tokenmeter_fake`` fixture's) adds the fake to ``NO_PROXY``."""
    dead = "http://127.0.0.1:9"  # the discard port: nothing answers there
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.setenv("NO_PROXY", "localhost")
    monkeypatch.delenv("no_proxy", raising=False)
    environ = fake.environ()
    assert environ["NO_PROXY"] == environ["no_proxy"] == "localhost,127.0.0.1"
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    chat = {"model": "gpt-4o", "messages": []}
    with fake.openai_client() as client:
        assert client.chat.completions.create(**chat).usage is not None
    message = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}
    with fake.anthropic_client() as anthropic_client:
        assert anthropic_client.messages.create(**message).usage.input_tokens == 25

    async def async_call() -> Any:
        async with fake.openai_client(async_=True) as client:
            return await client.chat.completions.create(**chat)

    assert asyncio.run(async_call()).usage is not None
    script = f"import openai; openai.OpenAI(max_retries=0).chat.completions.create(**{chat!r})"
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)


def test_import_works_without_any_provider_sdk() -> None:
    script = textwrap.dedent(
        """
        import sys
        for name in ("openai", "anthropic", "google.genai", "google.generativeai"):
            sys.modules[name] = None  # make the import fail like an uninstalled package
        from tokenmeter.testing import FakeProvider
        with FakeProvider() as fake:
            try:
                fake.openai_client()
            except ImportError:
                print("openai missing")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert out.stdout.strip() == "openai missing"


def test_abandoned_stream_leaves_the_server_healthy(
    fake: FakeProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.stream_chunks = 5000
    client = fake.openai_client()
    stream = client.chat.completions.create(model="gpt-4o", messages=[], stream=True)
    next(iter(stream))
    stream.close()
    assert client.chat.completions.create(model="gpt-4o", messages=[]).usage is not None
    assert "Traceback" not in capsys.readouterr().err


FORKED_INSIDE = """
import os, sys
from tokenmeter.testing import FakeProvider

with FakeProvider() as fake:
    fake.openai_client().chat.completions.create(model="gpt-4o", messages=[])
    child = os.fork()
    if child == 0:
        sys.exit(0)  # the child leaves the with block
    _, status = os.waitpid(child, 0)
    fake.openai_client().chat.completions.create(model="gpt-4o", messages=[])  # still serving
print("child", os.waitstatus_to_exitcode(status), len(fake.requests))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_inside_the_fake_leaves_it_at_once_and_the_parents_goes_on() -> None:
    """The child's stop() waited for a serving thread only its parent has: it hung for ever."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", FORKED_INSIDE],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},  # this checkout's code
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child hung leaving FakeProvider")
    assert done.stdout.split() == ["child", "0", "2"], done.stderr
