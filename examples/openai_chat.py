"""Meter OpenAI calls: a chat completion, a stream and an embedding, priced per session.

Runs offline: FakeProvider stands in for api.openai.com and answers the real `openai` SDK.

    python examples/openai_chat.py
"""

from __future__ import annotations

import tokenmeter
from tokenmeter.testing import FakeProvider


def main() -> None:
    tokenmeter.instrument()
    with FakeProvider() as fake, tokenmeter.session("openai-example") as s:
        client = fake.openai_client()  # an ordinary openai.OpenAI pointed at the fake server
        reply = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Say hello"}]
        )
        print("reply:", reply.choices[0].message.content)
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Count"}], stream=True
        )
        print("streamed chunks:", sum(1 for _ in stream))
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    tokenmeter.flush()
    summary = s.summary
    print(f"calls={summary.calls} tokens={summary.total_tokens} cost=${summary.cost_usd:f}")
    for model, totals in summary.by_model.items():
        print(f"  {model}: {totals.calls} call(s), ${totals.cost_usd:f}")


if __name__ == "__main__":
    main()
