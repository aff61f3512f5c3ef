"""Meter Anthropic calls, including prompt caching and the `.stream()` helper.

Runs offline against FakeProvider with the real `anthropic` SDK.

    python examples/anthropic_messages.py
"""

from __future__ import annotations

import tokenmeter
from tokenmeter.testing import FakeProvider


def main() -> None:
    tokenmeter.instrument()
    usage = {
        "input_tokens": 25,
        "output_tokens": 40,
        "cache_read_input_tokens": 2000,
        "cache_creation_5m": 500,
    }
    with FakeProvider(anthropic_usage=usage) as fake, tokenmeter.session("anthropic-example") as s:
        client = fake.anthropic_client()
        message = client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": "Hello"}],
        )
        print("reply:", message.content[0].text)
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": "Stream please"}],
        ) as stream:
            text = "".join(stream.text_stream)
        print("streamed:", text)
    tokenmeter.flush()
    summary = s.summary
    print(
        f"calls={summary.calls} input={summary.input_tokens} "
        f"cache_read={summary.cache_read_tokens} cache_write={summary.cache_write_tokens} "
        f"cost=${summary.cost_usd:f}"
    )


if __name__ == "__main__":
    main()
