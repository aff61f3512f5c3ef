"""``tokenmeter prices MODEL``: the rates tokenmeter would apply, and where they come from."""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import Any

from tokenmeter.cli._dates import format_instant
from tokenmeter.cli._errors import CliError
from tokenmeter.cli._output import write_output
from tokenmeter.cli.reports._format import dumps_exact

__all__ = ["run_prices"]

_RATE_LABELS = (
    ("input_per_mtok", "input"),
    ("output_per_mtok", "output"),
    ("cache_read_per_mtok", "cache read"),
    ("cache_write_per_mtok", "cache write (5 min)"),
    ("cache_write_1h_per_mtok", "cache write (1 hour)"),
    ("reasoning_per_mtok", "reasoning"),
    ("input_audio_per_mtok", "input audio"),
    ("output_audio_per_mtok", "output audio"),
    ("input_image_per_mtok", "input image"),
    ("output_image_per_mtok", "output image"),
    ("input_video_per_mtok", "input video"),
    ("output_video_per_mtok", "output video"),
    ("cache_read_audio_per_mtok", "cache read audio"),
    ("cache_read_image_per_mtok", "cache read image"),
    ("output_citation_per_mtok", "output citation"),
)
#: Modality rates shown in text only when they differ from the rate they otherwise equal.
_SAME_AS = {
    "input_image_per_mtok": "input_per_mtok",
    "input_video_per_mtok": "input_per_mtok",
    "output_image_per_mtok": "output_per_mtok",
    "output_video_per_mtok": "output_per_mtok",
    "cache_read_audio_per_mtok": "cache_read_per_mtok",
    "cache_read_image_per_mtok": "cache_read_per_mtok",
    "output_citation_per_mtok": "output_per_mtok",
}
#: Server-side tool fees, USD per 1,000 requests: shown when the model has one.
_FEE_LABELS = (
    ("web_search_per_k", "web search"),
    ("web_search_preview_per_k", "web search preview"),
    ("file_search_per_k", "file search"),
    ("code_execution_per_k", "code execution"),
    ("x_search_per_k", "X search"),
)


#: Fees per call at a larger search context (Perplexity's sonar models): shown when they differ.
_SIZED_FEE_LABELS = (
    ("per_request_medium_usd", "  medium context"),
    ("per_request_high_usd", "  high context"),
)


def _rates(rates: Any) -> dict[str, Decimal]:
    values = {name: getattr(rates, name) for name, _ in _RATE_LABELS}
    if getattr(rates, "per_request_usd", 0):
        values["per_request_usd"] = rates.per_request_usd
        values.update(_sized_fees(rates))
    return values


def _sized_fees(rates: Any) -> dict[str, Decimal]:
    return {
        name: getattr(rates, name)
        for name, _ in _SIZED_FEE_LABELS
        if getattr(rates, name) != rates.per_request_usd
    }


def _fees(rates: Any) -> dict[str, Decimal]:
    fees = {name: getattr(rates, name) for name, _ in _FEE_LABELS if getattr(rates, name)}
    if fees.get("web_search_preview_per_k") == fees.get("web_search_per_k"):
        fees.pop("web_search_preview_per_k", None)  # the same fee: said once
    return fees


def _priced_elsewhere(found: Any) -> str:
    """Says so when the rates are another provider's (the asked one has no price of its own)."""
    other = found.priced_provider
    if other is None or other == found.provider:
        return ""
    return f" (no price of its own: {other}'s price)"


def _load_user_prices() -> None:
    """Apply the price overrides a metered process would (environment and pyproject.toml)."""
    from tokenmeter._runtime import configure

    try:
        configure()  # (re)reads TOKENMETER_PRICES and [tool.tokenmeter]
    except ValueError as exc:  # a bad setting: a usage error, as in every command
        raise CliError(str(exc), exit_code=2) from None
    except OSError as exc:
        raise CliError(str(exc)) from None


def run_prices(args: argparse.Namespace) -> int:
    from tokenmeter.pricing import describe_price, suggest_models

    _load_user_prices()
    found = describe_price(args.provider, args.model, at=args.at, tier=args.tier)
    if found is None:
        where = f" for provider {args.provider!r}" if args.provider else ""
        nearest = suggest_models(args.model)
        hint = f" Did you mean {', '.join(nearest)}?" if nearest else ""
        raise CliError(
            f"no price known for model {args.model!r}{where}: its calls are recorded with a null "
            f"cost (set one with configure(prices=...) or TOKENMETER_PRICES).{hint}"
        )
    tiers = [{"above_input_tokens": start, **_rates(rates)} for start, rates in found.tiers]
    if args.format == "json":
        document = {
            "model": found.model,
            "provider": found.provider,
            "priced_provider": found.priced_provider,
            "priced_model": found.priced_model,
            "tier": found.tier,
            "at": format_instant(found.at),
            "price_source": found.price_source,
            "usd_per_million_tokens": _rates(found.rates),
            "usd_per_thousand_requests": _fees(found.rates),
            "long_context_tiers": tiers,
        }
        write_output(dumps_exact(document) + "\n", None)
        return 0
    lines = [
        f"model          {found.model}"
        + (f" (priced as {found.priced_model})" if found.priced_model != found.model else ""),
        f"provider       {found.provider or '(any)'}" + _priced_elsewhere(found),
        f"service tier   {found.tier}",
        f"as of          {format_instant(found.at)}",
        f"price source   {found.price_source}",
        "",
        "USD per 1M tokens",
    ]
    lines.extend(_rate_lines(found.rates))
    if found.rates.per_request_usd:
        lines.append(f"  {'per request (USD)':<22}{found.rates.per_request_usd:>12}")
        sized = _sized_fees(found.rates)
        for name, label in _SIZED_FEE_LABELS:
            if name in sized:
                lines.append(f"  {label:<22}{sized[name]:>12}")
    fees = _fees(found.rates)
    if fees:
        lines.append("USD per 1,000 server-side tool requests")
        for name, label in _FEE_LABELS:
            if name in fees:
                lines.append(f"  {label:<22}{fees[name]:>12}")
    for start, rates in found.tiers:
        lines.append(f"above {start:,} input tokens (every token of the call):")
        lines.extend(_rate_lines(rates))
    write_output("\n".join(lines) + "\n", None)
    return 0


def _rate_lines(rates: Any) -> list[str]:
    """One line per rate per million tokens, for the base rates and each long-context tier
    alike: a tier that listed only its first four left its 1-hour write and modality rates
    to be read from the base lines, which do not apply there."""
    lines = []
    for name, label in _RATE_LABELS:
        if name in _SAME_AS and getattr(rates, name) == getattr(rates, _SAME_AS[name]):
            continue  # billed like its side's text: nothing to add
        lines.append(f"  {label:<22}{getattr(rates, name):>12}")
    return lines
