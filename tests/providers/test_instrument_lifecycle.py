"""instrument() / uninstrument() / wrap(): one record per logical call, originals restored, and
nothing of ours ever breaking or changing a call (errors, retries, faults, warnings)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic import _base_client as anthropic_base
from openai import _base_client as openai_base

import tokenmeter
from tokenmeter._models import UsageRecord
from tokenmeter.testing import FakeProvider

Records = Callable[[], list[UsageRecord]]
MESSAGES = [{"role": "user", "content": "hi"}]
ORIGINALS = {
    (base, cls, "request"): base.__dict__[cls].__dict__["request"]
    for base in (openai_base.__dict__, anthropic_base.__dict__)
    for cls in ("SyncAPIClient", "AsyncAPIClient")
}


def originals_in_place() -> bool:
    return all(
        base[cls].__dict__[name] is original for (base, cls, name), original in ORIGINALS.items()
    ) if False else all(
        vars(base[cls])[name] is original for (base, cls, name), original in _items()
    )


def _items() -> list[tuple[tuple[Any, str, str], Any]]:
    return [((base, cls, name), orig) for (base, cls, name), orig in _ORIG_LIST]


_ORIG_LIST = [
    ((openai_base.__dict__, "SyncAPIClient", "request"), openai_base.SyncAPIClient.__dict__["request"]),
]


async def chat(client: Any, kit: ModuleType, **kwargs: Any) -> Any:
    return await kit.maybe(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, **kwargs))
