"""Settings: ``configure()`` arguments > ``TOKENMETER_*`` environment > ``[tool.tokenmeter]``.

Read once, lazily (the first record or ``instrument()``), never on the hot path.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

__all__ = ["SINK_NAMES", "Settings", "load_settings"]

SINK_NAMES = ("sqlite", "jsonl", "markdown")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Where the default sinks write (``usage.db``, ``usage.jsonl``, ``journal/``).
    directory: Path = Path(".tokenmeter")
    #: Default sinks by name, used when no sink objects are configured.
    sinks: tuple[str, ...] = ("sqlite",)
    #: ``instrument()`` does nothing when set.
    disabled: bool = False
    #: Price overrides (USD per million tokens), see ``tokenmeter.pricing.set_user_prices``.
    prices: dict[str, Any] = {}
    #: A TOML or JSON file of price overrides.
    prices_file: Path | None = None
    #: Model-name aliases, e.g. Azure deployment name -> model.
    aliases: dict[str, str] = {}
    #: Ask OpenAI chat streams for usage (and hide the extra chunk) when the caller did not.
    stream_usage: bool = True
    #: Records waiting for the writer thread before the caller is made to wait (see _pipeline).
    max_queue: int = 100_000
    #: How long interpreter exit waits for records to reach the sinks.
    exit_timeout: float = 10.0

    @field_validator("sinks", mode="before")
    @classmethod
    def _known_sinks(cls, value: Any) -> tuple[str, ...]:
        return _parse_sinks("sinks", value)


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name} must be 1/0, true/false, yes/no or on/off, got {value!r}")


def _parse_sinks(name: str, value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip().lower() for item in items if str(item).strip())
    unknown = [n for n in names if n not in SINK_NAMES]
    if unknown:
        raise ValueError(f"{name}: unknown sink {unknown[0]!r}; expected some of {SINK_NAMES}")
    return names


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if value := env.get("TOKENMETER_DIR"):
        found["directory"] = value
    if (value := env.get("TOKENMETER_SINKS")) is not None:
        found["sinks"] = _parse_sinks("TOKENMETER_SINKS", value)
    if (value := env.get("TOKENMETER_DISABLED")) is not None:
        found["disabled"] = _parse_bool("TOKENMETER_DISABLED", value)
    if value := env.get("TOKENMETER_PRICES"):
        found["prices_file"] = value
    if (value := env.get("TOKENMETER_STREAM_USAGE")) is not None:
        found["stream_usage"] = _parse_bool("TOKENMETER_STREAM_USAGE", value)
    return found


def _find_pyproject(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _from_pyproject(start: Path) -> dict[str, Any]:
    path = _find_pyproject(start)
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            table = tomllib.load(fh).get("tool", {}).get("tokenmeter", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read [tool.tokenmeter]: {exc}") from exc
    table = {key.replace("-", "_"): value for key, value in table.items()}
    if "sinks" in table:
        table["sinks"] = _parse_sinks(f"{path} [tool.tokenmeter] sinks", table["sinks"])
    for key in ("directory", "prices_file"):
        if key in table:  # relative paths are relative to the pyproject.toml that names them
            table[key] = path.parent / str(table[key])
    return dict(table)


def load_settings(
    explicit: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge the three layers; a bad value raises ValueError naming where it came from."""
    layers = [
        ("[tool.tokenmeter]", _from_pyproject(cwd or Path.cwd())),
        ("environment", _from_env(os.environ if env is None else env)),
        ("configure()", dict(explicit or {})),
    ]
    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged.update(layer)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else "?"
        source = next((name for name, layer in reversed(layers) if key in layer), "settings")
        raise ValueError(f"tokenmeter setting {key!r} from {source}: {error['msg']}") from None
