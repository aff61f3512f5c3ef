"""Model and provider name normalisation, done before any table lookup.

SDKs, proxies and clouds spell the same model many ways (``models/gemini-2.5-pro``,
``openai/gpt-4o``, ``us.anthropic.claude-…-v1:0``, ``claude-sonnet-4@20250514``, ``ft:gpt-4o-…``,
a brand-new dated snapshot). ``name_candidates`` lists the spellings to try, most specific first,
so an exact table entry always wins over a guess such as the undated family.
"""

from __future__ import annotations

import re

from tokenmeter._registry import price_id

__all__ = ["name_candidates", "normalise_provider"]

_BEDROCK_GEO = re.compile(r"^(?:us|eu|apac|ap|au|jp|ca|us-gov|global)\.")
_BEDROCK_VENDOR = re.compile(
    r"^(?:anthropic|meta|amazon|mistral|cohere|ai21|deepseek|openai|qwen|writer)\."
)
_BEDROCK_VERSION = re.compile(r"(?:-v\d+)?(?::\d+)?$")
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


def normalise_provider(provider: str | None) -> str | None:
    """Lower-case provider id, with common aliases mapped to genai-prices' ids."""
    if provider is None:
        return None
    name = provider.strip().lower()
    if not name:
        return None
    return price_id(name)  # aliases live in the provider registry


def name_candidates(model: str) -> list[str]:
    """Spellings of ``model`` to look up, most specific first (all lower case, no duplicates)."""
    name = model.strip().lower()
    found = [name]
    if "models/" in name:  # models/x, publishers/google/models/x, projects/p/.../models/x
        name = name.rsplit("models/", 1)[1]
        found.append(name)
    if name.startswith("ft:"):  # ft:<base>:<org>:<suffix>:<id>
        name = name[3:].split(":", 1)[0]
        found += [f"ft:{name}", f"ft:{_undated(name)}", name]
    if "/" in name:  # openai/gpt-4o, meta-llama/llama-3-70b
        name = name.rsplit("/", 1)[1]
        found.append(name)
    if "@" in name:  # Vertex: claude-sonnet-4@20250514, gemini-1.5-pro@002
        found.append(name.replace("@", "-"))
        name = name.split("@", 1)[0]
        found.append(name)
    bedrock = _BEDROCK_VERSION.sub("", _BEDROCK_VENDOR.sub("", _BEDROCK_GEO.sub("", name)))
    if bedrock != name and bedrock:
        name = bedrock
        found.append(name)
    found.append(_undated(name))
    return list(dict.fromkeys(found))


def _undated(name: str) -> str:
    """``gpt-4o-2099-01-01`` -> ``gpt-4o``: an unknown snapshot is priced like its family."""
    return _DATE_SUFFIX.sub("", name)
