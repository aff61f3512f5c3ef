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
import re
import stat
import threading
import tomllib
from collections.abc import Callable, Hashable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tokenmeter._fork import renew_after_fork
from tokenmeter._models import short_repr

from ._names import normalise_provider
from ._source import RateCard, Rates, Tier

__all__ = [
    "OVERRIDE_SOURCE",
    "UserPrice",
    "check_aliases",
    "check_prices",
    "load_prices_file",
    "no_repeated_keys",
    "read_prices_file",
    "set_aliases",
    "set_user_prices",
    "short_repr",
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
#: $1 a token. No model costs anything near it, so a larger rate is a typo (a missing decimal
#: point, a per-token price given per million); absurd rates such as 1e300 would also overflow
#: the float totals of the sinks and reports.
MAX_RATE_PER_MTOK = Decimal(1_000_000)
#: A pico-dollar a million tokens, the least positive rate: a smaller one is a typo (an
#: exponent's sign), and costs at it written out in full (the journal, ``tokenmeter tail``, JSON)
#: ran to millions of digits ("1e-999999999": a billion).
MIN_RATE_PER_MTOK = Decimal("1e-12")

#: Larger than any real prices file (genai-prices' whole table is about 1 MB as JSON): a bigger
#: one is a mistake (a log, a dump, /dev/zero), refused before it fills memory.
MAX_PRICES_FILE = 64 * 1024 * 1024
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


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
renew_after_fork(globals(), "_lock", threading.Lock)
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


def check_prices(mapping: Any) -> None:
    """Raise the ValueError ``set_user_prices(mapping)`` would, installing nothing.

    ``configure()`` checks its arguments before it changes anything, so that a bad entry
    cannot leave half the settings applied.
    """
    _parse_prices(mapping, origin=None)


def set_aliases(mapping: Mapping[str, str] | None) -> None:
    """Replace the alias map, e.g. ``{"my-gpt4o-prod-deployment": "gpt-4o"}``."""
    _install(_Settings(prices=_settings.prices, aliases=check_aliases(mapping or {})))


def check_aliases(mapping: Any) -> dict[str, str]:
    """The alias map ``set_aliases`` would install (normalised), or ValueError; installs nothing."""
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"aliases must be a mapping of alias to model name, got {short_repr(mapping)}"
        )
    aliases: dict[str, str] = {}
    for name, target in mapping.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"alias {short_repr(name)}: the alias must be a non-empty string")
        if not isinstance(target, str) or not target.strip():
            raise ValueError(
                f"alias {short_repr(name)}: the target model must be a non-empty string, "
                f"got {short_repr(target)}"
            )
        aliases[name.strip().lower()] = target.strip()
    return aliases


def read_prices_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and validate a TOML or JSON prices file; returns the raw mapping (its numbers as
    ``Decimal``), installs nothing.

    Lets a caller combine the file with other prices before ``set_user_prices``.
    """
    return _read_file(Path(path))[0]


def load_prices_file(path: str | os.PathLike[str]) -> None:
    """Read a prices file (the one ``TOKENMETER_PRICES`` names) and make it the user prices."""
    prices = _read_file(Path(path))[1]
    _install(_Settings(prices=prices, aliases=_settings.aliases))


def use_prices(
    file: str | os.PathLike[str] | None, prices: Mapping[str, Any], aliases: Mapping[str, str]
) -> None:
    """Make the prices file's entries, with ``prices`` over them, the user prices, and ``aliases``
    the alias map, in one step (what ``configure()`` applies): a call priced meanwhile on another
    thread sees the old settings or the new, never new prices with old aliases. The file is parsed
    once while it is unchanged: a table of many thousand models is checked by ``configure()`` and
    then applied without a second parse."""
    parsed = _read_file_once(Path(file))[1] if file is not None else {}
    if prices:
        # Per model name as matched (any case, spaces around), configure's prices win.
        parsed = {**parsed, **_parse_prices(prices, origin=None)}
    _install(_Settings(prices=parsed, aliases=check_aliases(aliases)))


def check_prices_file(file: str | os.PathLike[str]) -> None:
    """Raise the ValueError ``use_prices`` would for ``file``, installing nothing."""
    _read_file_once(Path(file))


_Parsed = tuple[dict[str, Any], dict[str, tuple[UserPrice, ...]]]
#: The last file ``_read_file_once`` parsed: (its identity and version, what it gave).
_last_file: tuple[tuple[Any, ...], _Parsed] | None = None


def _read_file_once(file: Path) -> _Parsed:
    """``_read_file(file)``, remembered while the file keeps its inode, size and mtime."""
    global _last_file
    try:
        info = file.stat()
        key: tuple[Any, ...] = (
            str(file.absolute()),
            info.st_dev,
            info.st_ino,
            info.st_size,
            info.st_mtime_ns,
        )
    except OSError:
        return _read_file(file)  # which says why it cannot be read
    remembered = _last_file
    if remembered is not None and remembered[0] == key:
        return remembered[1]
    parsed = _read_file(file)
    _last_file = (key, parsed)
    return parsed


def read_small_file(file: Path, what: str, limit: int) -> bytes:
    """The file's bytes: a regular file of at most ``limit`` bytes, or a ValueError naming it
    and ``what`` it was read as. Opened without blocking and checked before it is read: a FIFO
    would wait for a writer for ever, a device such as /dev/zero never ends."""
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ValueError(f"{file}: cannot read {what} ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{file}: a {what} must be a regular file")
    with os.fdopen(fd, "rb") as handle:
        try:
            raw = handle.read(limit + 1)
        except OSError as exc:
            raise ValueError(f"{file}: cannot read {what} ({exc.strerror or exc})") from exc
    if len(raw) > limit:
        raise ValueError(f"{file}: larger than {limit >> 20} MiB: not a {what}")
    return raw


def _read_file(file: Path) -> _Parsed:
    raw = read_small_file(file, "prices file", MAX_PRICES_FILE)
    try:
        text = raw.decode("utf-8-sig")  # tolerate the byte-order mark Windows editors write
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{file}: a prices file must be UTF-8 text (byte {exc.start} is not)"
        ) from None
    as_json = file.suffix.lower() == ".json" or (
        file.suffix.lower() != ".toml" and text.lstrip().startswith("{")
    )
    kind = "JSON" if as_json else "TOML"
    try:
        # Numbers as written, not as floats: 1e-400 would be 0.0, a silent $0 for a typo that
        # the rate checks refuse.
        data: Any = (
            json.loads(text, parse_float=Decimal, object_pairs_hook=no_repeated_keys)
            if as_json
            else tomllib.loads(text, parse_float=Decimal)
        )
    except RecursionError:
        # The decoders recurse once per level of nesting; no prices file nests more than three.
        culprit = _too_deep_json_key(text) if as_json else None
        raise ValueError(
            _where(str(file), None if culprit is None else short_repr(culprit))
            + "nested too deeply to be a prices file"
        ) from None
    except ValueError as exc:  # the decode errors, and ints past Python's digit limit
        raise ValueError(f"{file}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a table of models, got {type(data).__name__}")
    return data, _parse_prices(data, origin=str(file))


def no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names one key twice: the decoder kept the last one (a
    model's second entry silently won), where TOML refuses the file."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"{short_repr(key)} is given twice")
        found[key] = value
    return found


def _too_deep_json_key(text: str) -> str | None:
    """The top-level key whose value the JSON decoder could not descend into, if any.

    Runs only after ``json.loads`` gave up with RecursionError, to name the entry at fault: it
    walks the outer object one member at a time and decodes each value on its own.
    """
    decoder = json.JSONDecoder()
    try:
        pos = _json_skip(text, 0)
        if not text.startswith("{", pos):
            return None
        while True:
            key, pos = decoder.raw_decode(text, _json_skip(text, pos + 1))  # after "{" or ","
            pos = _json_skip(text, pos)
            if not isinstance(key, str) or not text.startswith(":", pos):
                return None
            try:
                _, pos = decoder.raw_decode(text, _json_skip(text, pos + 1))
            except RecursionError:
                return key
            pos = _json_skip(text, pos)
            if not text.startswith(",", pos):
                return None
    except ValueError:
        return None


def _json_skip(text: str, pos: int) -> int:
    match = _JSON_SPACE.match(text, pos)
    return match.end() if match else pos


def aliases() -> Mapping[str, str]:
    return _settings.aliases


def user_price_names() -> list[str]:
    """The model names that have user prices."""
    return list(_settings.prices)


def find_user_prices(names: list[str]) -> tuple[str, tuple[UserPrice, ...]] | None:
    """The first of ``names`` (normalised spellings) that has user prices."""
    found = every_user_price(names)
    return found[0] if found else None


def every_user_price(names: list[str]) -> list[tuple[str, tuple[UserPrice, ...]]]:
    """Each of ``names`` (normalised spellings, the most specific first) that has user prices,
    in that order: a snapshot's entries that do not apply to a call (another provider's, or
    not yet in force) leave it to the prices set for its family."""
    prices = _settings.prices
    return [(name, prices[name]) for name in names if prices.get(name)]


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
            _where(origin, None) + "expected a mapping of model name to prices, "
            f"got {short_repr(mapping)}"
        )
    parsed: dict[str, tuple[UserPrice, ...]] = {}
    # The place an error names is spelled out only for an error: a table of 100,000 models
    # would otherwise spend most of its parse on the text of errors it never raises.
    for model, value in mapping.items():
        if not isinstance(model, str) or not model.strip():
            raise ValueError(
                _where(origin, short_repr(model)) + "the model name must be a non-empty string"
            )
        key = model.strip().lower()
        if isinstance(value, Mapping):
            entries = [_located(key, value, origin, short_repr, model)]
        elif isinstance(value, list) and value:
            entries = [
                _located(key, item, origin, _item_of(index), model)
                for index, item in enumerate(value)
            ]
        else:
            raise ValueError(
                _where(origin, short_repr(model))
                + "expected a table of prices or a non-empty list of them"
            )
        merged = (*parsed.get(key, ()), *entries)
        if len({(e.provider, e.since) for e in merged}) < len(merged):
            raise ValueError(_where(origin, short_repr(model)) + _same_scope(merged))
        parsed[key] = merged
    return parsed


def _same_scope(entries: tuple[UserPrice, ...]) -> str:
    """The message for two entries of one model with the same provider and since date: which
    one applied was an accident of their order."""
    seen: set[tuple[str | None, date | None]] = set()
    for entry in entries:
        scope = (entry.provider, entry.since)
        if scope in seen:
            break
        seen.add(scope)
    provider = "any provider" if entry.provider is None else f"provider {entry.provider!r}"
    since = "" if entry.since is None else f" from {entry.since.isoformat()}"
    return f"two prices for {provider}{since} (model names match in any case)"


def _item_of(index: int) -> Callable[[Any], str]:
    return lambda model: f"{short_repr(model)}[{index}]"


def _located(
    key: str, raw: Any, origin: str | None, entry: Callable[[Any], str], model: Any
) -> UserPrice:
    """``_parse_entry``, its error (if any) prefixed with the file and the entry it is in."""
    try:
        return _parse_entry(key, raw)
    except ValueError as exc:
        raise ValueError(_where(origin, entry(model)) + str(exc)) from None


def _where(origin: str | None, entry: str | None) -> str:
    place = f"{origin}: " if origin else ""
    return f"{place}price entry {entry}: " if entry else place


def _parse_entry(model: str, raw: Any) -> UserPrice:
    """One price entry; a ValueError says what is wrong in it (the caller says where)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected a table of prices, got {type(raw).__name__}")
    unknown = sorted(_key_name(key) for key in raw if key not in _KNOWN_KEYS)
    if unknown:
        shown = ", ".join(unknown[:3]) + (
            f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        )
        raise ValueError(f"unknown key(s) {shown}; allowed: {', '.join(sorted(_KNOWN_KEYS))}")
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    rate = {key: _rate(raw[key], key) for key in (*_REQUIRED, *_OPTIONAL) if key in raw}
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
        raise ValueError(f"provider must be a non-empty string, got {short_repr(provider)}")
    return UserPrice(
        model=model,
        rates=rates,
        provider=normalise_provider(provider),
        since=_since(raw.get("since"), "since"),
    )


def _key_name(key: Any) -> str:
    """A key as written when it is a plain name, else its (short) repr."""
    return (
        key if isinstance(key, str) and key.isidentifier() and len(key) <= 60 else short_repr(key)
    )


def _not_a_number(where: str, value: Any) -> str:
    return f"{where} must be a number of USD per million tokens, got {short_repr(value)}"


def _rate(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(_not_a_number(where, value))
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {short_repr(value)}")
    try:
        # floats via str() so 0.1 is 0.1, not its binary expansion; ints directly, as str() of
        # a very long int raises
        rate = Decimal(str(value) if isinstance(value, float) else value)
    except InvalidOperation:
        raise ValueError(_not_a_number(where, value)) from None
    if not rate.is_finite() or rate < 0:
        raise ValueError(f"{where} must be a finite non-negative number, got {short_repr(value)}")
    if 0 < rate < MIN_RATE_PER_MTOK:
        raise ValueError(
            f"{where} must be 0 or at least {MIN_RATE_PER_MTOK} USD per million tokens, "
            f"got {short_repr(value)}"
        )
    if rate > MAX_RATE_PER_MTOK:
        raise ValueError(
            f"{where} must be at most {MAX_RATE_PER_MTOK} USD per million tokens "
            f"($1 a token), got {short_repr(value)}"
        )
    return rate if rate else Decimal(0)  # "-0" is a valid Decimal; show it as 0


def _since(value: Any, where: str) -> date | None:
    """The UTC day an entry takes effect (a date, or a moment at UTC midnight)."""
    if value is None:
        return None
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        return value
    elif isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
        with suppress(ValueError):
            moment = datetime.fromisoformat(value.strip())
    day = None if moment is None else _utc_day(moment, value, where)
    if day is None:
        raise ValueError(f"{where} must be a date like 2026-01-01, got {short_repr(value)}")
    return day


def _utc_day(moment: datetime, value: Any, where: str) -> date | None:
    """The UTC day of a ``since`` given as a moment (None if it has none). Prices change by the
    day and are looked up per UTC day: a time of day other than UTC midnight is refused, not
    moved to midnight, which made "2027-01-01T12:00:00Z" apply twelve hours early."""
    try:
        utc = moment.astimezone(UTC) if moment.tzinfo else moment
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        return None
    if utc.time() != time(0):
        raise ValueError(
            f"{where} must be a date like 2026-01-01 (a time of day is not supported), "
            f"got {short_repr(value)}"
        )
    return utc.date()
