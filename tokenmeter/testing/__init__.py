"""Offline test helpers: `FakeProvider` (a fake OpenAI / Anthropic / Gemini server for the real
SDKs) and `InMemorySink` (a sink that keeps records in a list).

    from tokenmeter.testing import FakeProvider

    with FakeProvider(openai_usage={"prompt_tokens": 19, "completion_tokens": 10}) as fake:
        client = fake.openai_client()            # or openai.OpenAI(base_url=fake.openai_base_url)
        client.chat.completions.create(model="gpt-4o", messages=[...]).usage.prompt_tokens  # 19
        fake.fail_next(status=429)                # next call raises openai.RateLimitError
"""

from tokenmeter.sinks.memory import InMemorySink
from tokenmeter.testing._provider import FakeProvider
from tokenmeter.testing._server import FakeRequest
from tokenmeter.testing._usage import AnthropicUsage, GeminiUsage, OpenAIUsage

__all__ = [
    "AnthropicUsage",
    "FakeProvider",
    "FakeRequest",
    "GeminiUsage",
    "InMemorySink",
    "OpenAIUsage",
]
