"""How close ``tokenmeter``'s estimates come to the usage providers really reported.

Reads recorded API exchanges (VCR-style YAML cassettes whose interactions carry a JSON request
``parsed_body`` and a JSON response ``parsed_body``), estimates each request's input and each
response's visible output as tokenmeter would for a call that reported nothing, and prints the
relative error per provider and side: median and worst (signed: + over, - under).

    python benchmarks/estimate_accuracy.py DIR [DIR ...]
    python benchmarks/estimate_accuracy.py --media DIR [DIR ...]

``--media`` measures the other side: only the exchanges whose request carries images, files or
audio (input only, grouped by the kinds of media the request carries).

No recorded exchange ships with tokenmeter: point it at any set of cassettes (those of open-source
projects' test suites). Needs PyYAML. Exchanges with images, files or audio, server-side tools,
hidden reasoning, or cache reads are left out: their counts depend on what an estimate cannot see.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from tokenmeter._estimate import TextTally, estimate_input

_SKIP_WORDS = (
    "image",
    "input_file",
    "document",
    "audio",
    "video",
    "file_data",
    "inline_data",
    "fileData",
)


def _provider(uri: str) -> str | None:
    if "anthropic.com" in uri:
        return "anthropic"
    if "googleapis.com" in uri and ":generateContent" in uri:
        return "google"
    if "api.openai.com" in uri and uri.rstrip("/").endswith(("/chat/completions", "/responses")):
        return "openai"
    return None


def _real(provider: str, body: dict[str, Any]) -> tuple[int, int, int] | None:
    """(input, visible output, hidden output) as the provider reported them."""
    if provider == "anthropic":
        u = body.get("usage") or {}
        if u.get("cache_read_input_tokens") or u.get("server_tool_use"):
            return None
        total_in = u.get("input_tokens", 0) + (u.get("cache_creation_input_tokens") or 0)
        return total_in, u.get("output_tokens", 0), 0
    if provider == "google":
        u = body.get("usageMetadata") or {}
        if u.get("cachedContentTokenCount") or u.get("toolUsePromptTokenCount"):
            return None
        return u.get("promptTokenCount", 0), u.get("candidatesTokenCount", 0), 0
    u = body.get("usage") or {}
    if "prompt_tokens" in u:
        details = u.get("completion_tokens_details") or {}
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
        hidden = details.get("reasoning_tokens") or 0
        return None if cached else (u["prompt_tokens"], u["completion_tokens"], hidden)  # type: ignore[return-value]
    if "input_tokens" in u:
        hidden = (u.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
        if (u.get("input_tokens_details") or {}).get("cached_tokens"):
            return None
        return u["input_tokens"], u["output_tokens"], hidden
    return None


def _output_text(provider: str, body: dict[str, Any]) -> TextTally:
    tally = TextTally()
    if provider == "anthropic":
        for block in body.get("content") or []:
            tally.add(block.get("text"))
            if block.get("type") == "tool_use":
                tally.add(block.get("name"))
                tally.add(json.dumps(block.get("input"), separators=(",", ":")))
    elif provider == "google":
        for cand in body.get("candidates") or []:
            for part in (cand.get("content") or {}).get("parts") or []:
                if not part.get("thought"):
                    tally.add(part.get("text"))
                if part.get("functionCall"):
                    tally.add(part["functionCall"].get("name"))
                    tally.add(json.dumps(part["functionCall"].get("args"), separators=(",", ":")))
    elif "choices" in body:
        for choice in body["choices"]:
            message = choice.get("message") or {}
            tally.add(message.get("content"))
            for call in message.get("tool_calls") or []:
                tally.add((call.get("function") or {}).get("name"))
                tally.add((call.get("function") or {}).get("arguments"))
    else:
        for item in body.get("output") or []:
            for part in item.get("content") or []:
                tally.add(part.get("text"))
            tally.add(item.get("name"))
            tally.add(item.get("arguments"))
    return tally


def _media_kinds(request: dict[str, Any]) -> str:
    """The kinds of media a request carries ("" for none), e.g. "image+audio"."""
    text = json.dumps(request)
    kinds = {
        "image": ("image_url", "input_image", '"image"', "image/"),
        "audio": ("input_audio", "audio/"),
        "document": ("input_file", '"file"', "document", "application/pdf"),
        "video": ("video/",),
    }
    found = [kind for kind, words in kinds.items() if any(word in text for word in words)]
    inline = ("base64", "inlineData", "inline_data", '"data": "', "file_data")
    where = "inline" if any(word in text for word in inline) else "by reference"
    return f"{'+'.join(found)}, {where}" if found else ""


def _skip(request: dict[str, Any], response: dict[str, Any], provider: str, media: bool) -> bool:
    text = json.dumps(request)
    if request.get("stream"):
        return True
    has_media = any(word in text for word in _SKIP_WORDS)
    if has_media != media or (media and not _media_kinds(request)):
        return True
    tools = json.dumps(request.get("tools") or [])
    if provider == "anthropic" and '"type": "' in tools and '"custom"' not in tools:
        server = any(t.get("type") not in (None, "custom") for t in request.get("tools") or [])
        if server:
            return True
    if provider == "openai" and any(
        t.get("type") not in ("function", None) for t in request.get("tools") or []
    ):
        return True
    # State kept on the server (earlier turns, compacted context) is billed but not in the request.
    stateful = ("previous_response_id", "conversation", "context_management", "thinking")
    return any(request.get(key) for key in stateful)


def main(dirs: list[str]) -> None:
    media = "--media" in dirs
    dirs = [d for d in dirs if d != "--media"]
    errors: dict[tuple[str, str], list[float]] = {}
    for directory in dirs:
        for path in sorted(Path(directory).rglob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text())
            except Exception:
                continue
            for it in (data or {}).get("interactions") or []:
                req, resp = it.get("request") or {}, it.get("response") or {}
                provider = _provider(req.get("uri", ""))
                request, response = req.get("parsed_body"), resp.get("parsed_body")
                if provider is None or not isinstance(request, dict):
                    continue
                if not isinstance(response, dict) or _skip(request, response, provider, media):
                    continue
                real = _real(provider, response)
                if real is None or real[0] <= 0:
                    continue
                if provider == "google":
                    model = req["uri"].split("models/")[-1].split(":")[0]
                    request = {**request, "model": model}
                operation = "responses" if "input" in request else None
                guess = estimate_input(provider, request, operation).input_tokens
                side = f"input ({_media_kinds(request)})" if media else "input"
                errors.setdefault((provider, side), []).append(guess / real[0] - 1)
                if media:
                    continue
                visible = real[1] - real[2]
                if visible >= 5 and not real[2]:
                    model = str(request.get("model") or "")
                    out = _output_text(provider, response).tokens(provider, model)
                    errors.setdefault((provider, "output"), []).append(out / visible - 1)
    width = max([7, *(len(side) for _, side in errors)])
    print(f"{'provider':<10} {'side':<{width}} {'n':>4} {'median':>8} {'|median|':>8} {'worst':>8}")
    for (provider, side), found in sorted(errors.items()):
        worst = max(found, key=abs)
        print(
            f"{provider:<10} {side:<{width}} {len(found):>4} {statistics.median(found):>+8.1%} "
            f"{statistics.median(abs(e) for e in found):>8.1%} {worst:>+8.1%}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
