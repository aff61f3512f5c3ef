"""Made-up reply content: text split into stream pieces, JSON that fits a requested schema, ids.

Structured-output helpers (OpenAI ``parse``, Anthropic ``output_config``, Gemini
``responseSchema``) and function calling validate what comes back, so the fake must answer with
values that satisfy the schema the request declared.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

__all__ = ["REPLY_TEXT", "new_id", "now", "sample_from_schema", "schema_reply", "text_pieces"]

REPLY_TEXT = "Hello from FakeProvider!"
_WORDS = ("Hello", " from", " Fake", "Provider", "!")
#: google-generativeai sends proto enums as integers (``enum-encoding=int``).
_PROTO_TYPES = {1: "string", 2: "number", 3: "integer", 4: "boolean", 5: "array", 6: "object"}


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def text_pieces(count: int) -> list[str]:
    """``count`` stream deltas that spell `REPLY_TEXT` (longer streams append `` w5 w6 ...``)."""
    words = len(_WORDS)
    if count <= words:
        return [
            "".join(_WORDS[i * words // count : (i + 1) * words // count]) for i in range(count)
        ]
    return [*_WORDS, *(f" w{i}" for i in range(words, count))]


def sample_from_schema(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A small value valid for a JSON schema (OpenAPI-style upper-case types accepted too)."""
    if not isinstance(schema, dict) or depth > 12:
        return None
    defs = {**(defs or {}), **schema.get("$defs", {}), **schema.get("definitions", {})}
    if "$ref" in schema:
        return sample_from_schema(defs.get(schema["$ref"].rsplit("/", 1)[-1]), defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [s for s in schema.get(key, []) if str(s.get("type", "")).lower() != "null"]
        if options:
            return sample_from_schema(options[0], defs, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    kind = _PROTO_TYPES.get(kind, kind) if isinstance(kind, int) else str(kind).lower()
    if kind == "object":
        props = schema.get("properties", {})
        return {name: sample_from_schema(sub, defs, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [sample_from_schema(schema.get("items", {}), defs, depth + 1)]
    return {"string": "fake", "integer": 42, "number": 1.5, "boolean": True}.get(kind)


def schema_reply(schema: Any) -> str:
    """Reply text for a structured-output request: the sample serialised as JSON."""
    return json.dumps(sample_from_schema(schema))
