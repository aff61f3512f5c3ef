"""Meter the legacy google-generativeai SDK (0.8.x), which hides thinking tokens.

tokenmeter derives output as total - prompt there, so thinking is still billed.

    python examples/gemini_legacy.py
"""

from __future__ import annotations

import warnings

import tokenmeter
from tokenmeter.testing import FakeProvider

warnings.filterwarnings("ignore", category=FutureWarning)  # the SDK's end-of-support notice


def main() -> None:
    import google.generativeai as genai

    tokenmeter.instrument()
    usage = {"prompt": 50, "candidates": 20, "thoughts": 30}
    with FakeProvider(gemini_usage=usage) as fake, tokenmeter.session("legacy-example") as s:
        fake.configure_generativeai()
        model = genai.GenerativeModel("gemini-2.5-flash")
        print("reply:", model.generate_content("Hello").text)
        chat = model.start_chat()
        chat.send_message("And again")
    tokenmeter.flush()
    summary = s.summary
    print(
        f"calls={summary.calls} input={summary.input_tokens} output={summary.output_tokens} "
        f"cost=${summary.cost_usd:f}"
    )


if __name__ == "__main__":
    main()
