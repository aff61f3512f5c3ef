"""The layer consulted before any table: user prices, user aliases, and the prices file.

User prices (``set_user_prices`` / ``load_prices_file``) are USD per million tokens, optionally
scoped to one provider and starting on a ``since`` date; they apply as given in every service
tier. Aliases map names the tables cannot know (Azure deployments, proxy routes) to real model
names. Both are validated completely before they replace the previous setting, so a bad entry
changes nothing.
"""

from __future__ import annotations

import json
import math
import os
import threading
import tomllib
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ._names import normalise_provider
from ._source import RateCard, Rates, Tier

__all__ = [
    "OVERRIDE_SOURCE",
    "UserPrice",
    "load_prices_file",
    "read_prices_file",
    "set_aliases",
    "set_user_prices",
]

OVERRIDE_SOURCE = "override"

_REQUIRED = ("input_per_mtok", "output_per_mtok")
_OPTIONAL = (
    "cache_read_per_mtok",
    "cache_write_per_mtok",
    "cache_write_1h_per_mtok",
    "input_audio_per_mtok",
    "output_audio_per_mtok",
)
_KNOWN_KEYS = frozenset((*_REQUIRED, *_OPTIONAL, "provider", "since"))


@dataclass(frozen=True)
class UserPrice:
    """One validated user price entry."""

    model: str
    rates: Rates
    provider: str | None = None
    since: date | None = None


@dataclass(frozen=True)
class _Settings:
    prices: Mapping[str, tuple[UserPrice, ...]]
    aliases: Mapping[str, str]


_settings = _Settings(prices={}, aliases={})
_lock = threading.Lock()
_listeners: list[Callable[[], None]] = []


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` after every change of prices or aliases (the engine drops its cache)."""
    _listeners.append(listener)


def _install(settings: _Settings) -> None:
    global _settings
    with _lock:
        _settings = settings
    for listener in _listeners:
        listener()


def set_user_prices(mapping: Mapping[str, Any] | None) -> None:
    """Replace all user prices (``None`` or ``{}`` removes them); ValueError on a bad entry."""
    _install(_Settings(prices=_parse_prices(mapping or {}, origin=None), aliases=_settings.aliases))


def set_aliases(mapping: Mapping[str, str] | None) -> None:
    """Replace the alias map, e.g. ``{"my-gpt4o-prod-deployment": "gpt-4o"}``."""
    aliases: dict[str, str] = {}
    for name, target in (mapping or {}).items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"alias {name!r}: the alias must be a non-empty string")
        if not isinstance(target, str) or not target.strip():
            raise ValueError(f"alias {name!r}: the target model must be a non-empty string")
        aliases[name.strip().lower()] = target.strip()
    _install(_Settings(prices=_settings.prices, aliases=aliases))


def read_prices_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and validate a TOML or JSON prices file; returns the raw mapping, installs nothing.

    Lets a caller combine the file with other prices before ``set_user_prices``.
    """
    return _read_file(Path(path))[0]


def load_prices_file(path: str | os.PathLike[str]) -> None:
    """Read a prices file (the one ``TOKENMETER_PRICES`` names) and make it the user prices."""
    prices = _read_file(Path(path))[1]
    _install(_Settings(prices=prices, aliases=_settings.aliases))


def _read_file(file: Path) -> tuple[dict[str, Any], dict[str, tuple[UserPrice, ...]]]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{file}: cannot read prices file ({exc.strerror or exc})") from exc
    as_json = file.suffix.lower() == ".json" or (
        file.suffix.lower() != ".toml" and text.lstrip().startswith("{")
    )
    try:
        data: Any = json.loads(text) if as_json else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if as_json else "TOML"
        raise ValueError(f"{file}: not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a table of models, got {type(data).__name__}")
    return data, _parse_prices(data, origin=str(file))


def aliases() -> Mapping[str, str]:
    return _settings.aliases


def find_user_prices(names: list[str]) -> tuple[str, tuple[UserPrice, ...]] | None:
    """The first of ``names`` (normalised spellings) that has user prices."""
    prices = _settings.prices
    for name in names:
        entries = prices.get(name)
        if entries:
            return name, entries
    return None


class UserPricedModel:
    """``PricedModel`` over a model's user price entries for one provider."""

    time_dependent = False

    def __init__(self, model: str, entries: tuple[UserPrice, ...], provider: str | None) -> None:
        usable = [e for e in entries if e.provider is None or e.provider == provider]
        # Latest start wins; at the same start, a provider-scoped entry beats a general one.
        self._entries = sorted(
            usable, key=lambda e: (e.since or date.min, e.provider is not None), reverse=True
        )
        self._model = model

    def time_slot(self, at: datetime) -> Hashable:
        return None

    def tier_start(self, tier: Tier) -> date | None:
        return date.min

    def rate_card(self, at: datetime, tier: Tier) -> RateCard | None:
        day = at.date()
        for entry in self._entries:
            if entry.since is None or entry.since <= day:
                return RateCard(
                    priced_model=self._model, price_source=OVERRIDE_SOURCE, base=entry.rates
                )
        return None


def _parse_prices(
    mapping: Mapping[str, Any], *, origin: str | None
) -> dict[str, tuple[UserPrice, ...]]:
    if not isinstance(mapping, Mapping):
        raise ValueError(
            _where(origin, None) + f"expected a mapping of models, got {type(mapping).__name__}"
        )
    parsed: dict[str, tuple[UserPrice, ...]] = {}
    for model, value in mapping.items():
        if not isinstance(model, str) or not model.strip():
            raise ValueError(
                _where(origin, repr(model)) + "the model name must be a non-empty string"
            )
        key = model.strip().lower()
        if isinstance(value, Mapping):
            entries = [_parse_entry(key, value, _where(origin, repr(model)))]
        elif isinstance(value, list) and value:
            entries = [
                _parse_entry(key, item, _where(origin, f"{model!r}[{index}]"))
                for index, item in enumerate(value)
            ]
        else:
            raise ValueError(
                _where(origin, repr(model))
                + "expected a table of prices or a non-empty list of them"
            )
        parsed[key] = (*parsed.get(key, ()), *entries)
    return parsed


def _where(origin: str | None, entry: str | None) -> str:
    place = f"{origin}: " if origin else ""
    return f"{place}price entry {entry}: " if entry else place


def _parse_entry(model: str, raw: Any, where: str) -> UserPrice:
    if not isinstance(raw, Mapping):
        raise ValueError(where + f"expected a table of prices, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(
            where + f"unknown key(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(sorted(_KNOWN_KEYS))}"
        )
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise ValueError(where + f"missing {', '.join(missing)}")
    rate = {key: _rate(raw[key], where + key) for key in (*_REQUIRED, *_OPTIONAL) if key in raw}
    input_rate, output_rate = rate["input_per_mtok"], rate["output_per_mtok"]
    cache_write = rate.get("cache_write_per_mtok", input_rate)
    rates = Rates(
        input_per_mtok=input_rate,
        output_per_mtok=output_rate,
        cache_read_per_mtok=rate.get("cache_read_per_mtok", input_rate),
        cache_write_per_mtok=cache_write,
        cache_write_1h_per_mtok=rate.get("cache_write_1h_per_mtok", cache_write),
        input_audio_per_mtok=rate.get("input_audio_per_mtok", input_rate),
        output_audio_per_mtok=rate.get("output_audio_per_mtok", output_rate),
        reasoning_per_mtok=output_rate,
    )
    provider = raw.get("provider")
    if provider is not None and (not isinstance(provider, str) or not provider.strip()):
        raise ValueError(where + f"provider must be a non-empty string, got {provider!r}")
    return UserPrice(
        model=model,
        rates=rates,
        provider=normalise_provider(provider),
        since=_since(raw.get("since"), where + "since"),
    )


def _rate(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{where} must be a number of USD per million tokens, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    try:
        rate = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(
            f"{where} must be a number of USD per million tokens, got {value!r}"
        ) from None
    if not rate.is_finite() or rate < 0:
        raise ValueError(f"{where} must be a finite non-negative number, got {value!r}")
    return rate


def _since(value: Any, where: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).date() if value.tzinfo else value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
        try:
            return _since(datetime.fromisoformat(value.strip()), where)
        except ValueError:
            pass
    raise ValueError(f"{where} must be a date like 2026-01-01, got {value!r}")
