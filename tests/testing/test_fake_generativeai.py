"""The legacy google-generativeai SDK over its REST transport against FakeProvider.

Its REST transport has no async variant, so async is not covered here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator

import pytest

from tokenmeter.testing import FakeProvider, GeminiUsage

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import google.generativeai as legacy
    from google.api_core import exceptions as api_errors

USAGE = GeminiUsage(prompt=8, candidates=5, cached=2, thoughts=32)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(gemini_usage=USAGE, stream_chunks=3) as provider:
        provider.configure_generativeai()
        yield provider


def test_generate_content(fake: FakeProvider) -> None:
    response = legacy.GenerativeModel("gemini-1.5-flash").generate_content("hi")
    meta = response.usage_metadata
    assert (meta.prompt_token_count, meta.candidates_token_count) == (8, 5)
    assert meta.cached_content_token_count == 2
    # The pinned proto drops thoughtsTokenCount, but the total still includes the 32 thoughts.
    assert meta.total_token_count == 45
    assert response.text == "Hello from FakeProvider!"
    request = fake.requests[-1]
    assert request.path == "/v1beta/models/gemini-1.5-flash:generateContent"
    assert "key" not in request.query  # API keys never reach the request log


def test_rest_stream_is_a_json_array_with_running_totals(fake: FakeProvider) -> None:
    response = legacy.GenerativeModel("gemini-1.5-flash").generate_content("hi", stream=True)
    totals = [chunk.usage_metadata.total_token_count for chunk in response]
    assert totals == [41, 43, 45]
    assert response.usage_metadata.total_token_count == 45
    assert response.text == "Hello from FakeProvider!"
    request = fake.requests[-1]
    assert request.path.endswith(":streamGenerateContent")
    assert "alt" not in request.query  # not SSE: the legacy SDK parses a streamed JSON array


def test_chat_session_and_count_tokens(fake: FakeProvider) -> None:
    model = legacy.GenerativeModel("gemini-1.5-flash")
    chat = model.start_chat()
    assert chat.send_message("hi").usage_metadata.total_token_count == 45
    assert chat.send_message("again").usage_metadata.prompt_token_count == 8
    assert model.count_tokens("hi").total_tokens == 8


def test_error_injection(fake: FakeProvider) -> None:
    fake.fail_next(status=500, message="injected")
    with pytest.raises(api_errors.InternalServerError, match="injected"):
        legacy.GenerativeModel("gemini-1.5-flash").generate_content("hi")
    fake.fail_next(status=429)
    with pytest.raises(api_errors.TooManyRequests):
        legacy.GenerativeModel("gemini-1.5-flash").generate_content("hi")


async def test_async_calls_go_over_the_in_process_grpc_fake(fake: FakeProvider) -> None:
    fake.configure_generativeai_async()
    model = legacy.GenerativeModel("gemini-1.5-flash")
    response = await model.generate_content_async("hi")
    assert response.usage_metadata.total_token_count == 45
    assert response.usage_metadata.prompt_token_count == 8
    assert response.text == "Hello from FakeProvider!"
    stream = await model.generate_content_async("hi", stream=True)
    totals = [chunk.usage_metadata.total_token_count async for chunk in stream]
    assert totals == [41, 43, 45]
    assert (await model.count_tokens_async("hi")).total_tokens == 8
    assert fake.requests[0].path.endswith("GenerativeService/GenerateContent")
    assert fake.requests[0].body["contents"][0]["parts"][0]["text"] == "hi"
    fake.fail_next(status=429, message="slow down")
    with pytest.raises(api_errors.ResourceExhausted, match="slow down"):
        await model.generate_content_async("hi")


FORKED_INSIDE_WITH_GRPC = """
import asyncio, os, sys, time, warnings
warnings.simplefilter("ignore")
import google.generativeai as legacy
from tokenmeter.testing import FakeProvider

def left(child):
    # The child's exit status, or None (the child killed) if it is still inside after 30 s.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(child, 9)
    os.waitpid(child, 0)
    return None

async def main():
    with FakeProvider() as fake:
        fake.configure_generativeai()
        fake.configure_generativeai_async()
        model = legacy.GenerativeModel("gemini-1.5-flash")
        await model.generate_content_async("hi")
        child = os.fork()
        if child == 0:
            sys.exit(0)  # the child leaves the with block
        status = left(child)
        await model.generate_content_async("hi")  # the parent's gRPC fake still serves
    print("child", status, len(fake.requests))

asyncio.run(main())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_inside_the_fake_with_the_grpc_server_leaves_it_at_once() -> None:
    """With the async SDK's gRPC fake started, a child forked inside ``with FakeProvider()``
    left the HTTP server at once but then waited for ever in the gRPC server's stop(), on
    threads only its parent has. The child drops it; the parent's goes on serving."""
    done = subprocess.run(
        [sys.executable, "-c", FORKED_INSIDE_WITH_GRPC],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},  # this checkout's code
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split() == ["child", "0", "2"], done.stderr[-2000:]
