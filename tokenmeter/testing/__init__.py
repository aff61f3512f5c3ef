"""Offline test helpers: `FakeProvider` (a fake OpenAI / Anthropic / Gemini server for the real
SDKs) and `InMemorySink` (a sink that keeps records in a list)."""

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
