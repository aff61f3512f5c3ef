"""Meter Google Gemini calls (google-genai): thinking tokens count as output.

Runs offline against FakeProvider with the real `google-genai` SDK.

    python examples/gemini.py
"""

from __future__ import annotations

import tokenmeter
from tokenmeter.testing import FakeProvider


def main() -> None:
    tokenmeter.instrument()
    usage = {"prompt": 120, "candidates": 30, "thoughts": 200, "cached": 100}
    with FakeProvider(gemini_usage=usage) as fake, tokenmeter.session("gemini-example") as s:
        client = fake.genai_client()
        response = client.models.generate_content(model="gemini-2.5-flash", contents="Hello")
        print("reply:", response.text)
        chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="Hi"))
        print("streamed chunks:", len(chunks))
    tokenmeter.flush()
    summary = s.summary
    print(
        f"calls={summary.calls} input={summary.input_tokens} output={summary.output_tokens} "
        f"reasoning={summary.reasoning_tokens} cost=${summary.cost_usd:f}"
    )


if __name__ == "__main__":
    main()
