"""FakeProvider under a burst: 200 concurrent calls, none dropped (its clients never retry).

A burst of concurrent connections used to overflow the server's listen backlog (socketserver's
default of 5), and 2-19 of 40 ``asyncio.gather``-ed calls failed with a connection error.
"""

from __future__ import annotations

import asyncio
import threading

from tokenmeter.testing import FakeProvider

BURST = 200


async def test_200_concurrent_async_calls_all_succeed(fake: FakeProvider) -> None:
    openai_client = fake.openai_client(async_=True)
    anthropic_client = fake.anthropic_client(async_=True)

    async def chat() -> int:
        reply = await openai_client.chat.completions.create(model="gpt-4o", messages=[])
        assert reply.usage is not None
        return reply.usage.prompt_tokens

    async def streamed_chat() -> int:
        stream = await openai_client.chat.completions.create(
            model="gpt-4o", messages=[], stream=True, stream_options={"include_usage": True}
        )
        usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
        return usage[-1].prompt_tokens

    async def message() -> int:
        reply = await anthropic_client.messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[]
        )
        return reply.usage.input_tokens

    kinds = (chat, streamed_chat, message)
    async with openai_client, anthropic_client:
        results = await asyncio.gather(
            *(kinds[i % 3]() for i in range(BURST)), return_exceptions=True
        )
    failures = [repr(result) for result in results if isinstance(result, BaseException)]
    assert failures == []
    assert len(fake.requests) == BURST


def test_200_concurrent_threads_all_succeed(fake: FakeProvider) -> None:
    client = fake.openai_client()
    start = threading.Barrier(BURST)
    failures: list[str] = []

    def call() -> None:
        start.wait()  # every thread connects at once
        try:
            client.chat.completions.create(model="gpt-4o", messages=[])
        except Exception as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=call) for _ in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert failures == []
    assert len(fake.requests) == BURST
