"""Every case of the research reference table must come out at the list price, to the Decimal.

Where the notes say genai-prices 0.2.3 is wrong, our errata must give the list-price check.
"""

import csv
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import GENAI_PRICES_SOURCE

from tokenmeter._models import Usage
from tokenmeter.pricing import price_usage, set_aliases

CSV = Path(__file__).with_name("pricing-reference.csv")
# Rows carry no timestamp unless their notes say so; research was run on 2026-11-23.
RESEARCH_DAY = datetime(2026, 11, 23, 12, tzinfo=UTC)
#: Table entries whose card the errata correct in a rate some rows do not use (the fine-tunes'
#: and gemini-1.5-pro's cache-read rate): those rows agree with genai-prices, but the card they
#: are priced by is tokenmeter's, and says so.
CORRECTED_CARDS = frozenset({"ft:gpt-4o", "ft:gpt-4o-mini", "gemini-1.5-pro"})


@dataclass(frozen=True)
class Case:
    row: int
    provider: str
    model: str
    usage: Usage
    at: datetime
    tier: str | None
    expected: Decimal | None
    genai_prices_wrong: bool


def _cases() -> list[Case]:
    cases = []
    with CSV.open(newline="") as f:
        for row_number, row in enumerate(csv.DictReader(f), start=1):
            notes = row["notes"]
            check = re.search(r"list-price check=([0-9.]+)", notes)
            audio = re.search(r"audio in=(\d+) out=(\d+)", notes)
            cache_write = int(row["cache_write_tokens"])
            usage = Usage(
                input_tokens=int(row["input_tokens"]),
                output_tokens=int(row["output_tokens"]),
                cache_read_tokens=int(row["cached_read_tokens"]),
                cache_write_tokens=cache_write,
                cache_write_1h_tokens=cache_write if "cache_write is 1h" in notes else 0,
                reasoning_tokens=int(row["reasoning_tokens"]),
                input_audio_tokens=int(audio.group(1)) if audio else 0,
                output_audio_tokens=int(audio.group(2)) if audio else 0,
            )
            ts = re.search(r'"ts": "(\d{4}-\d\d-\d\d)"', notes)
            tier = "flex" if '"service_tier": "flex"' in notes else None
            tier = "batch" if '"batch": true' in notes else tier
            cases.append(
                Case(
                    row=row_number,
                    provider=row["provider"],
                    model=row["model"],
                    usage=usage,
                    at=datetime.fromisoformat(ts.group(1)).replace(tzinfo=UTC)
                    if ts
                    else RESEARCH_DAY,
                    tier=tier,
                    expected=Decimal(check.group(1)) if check else None,
                    genai_prices_wrong=bool(
                        check
                        and row["genai_prices_usd"]
                        and Decimal(row["genai_prices_usd"]) != Decimal(check.group(1))
                    ),
                )
            )
    return cases


CASES = _cases()


def test_the_table_has_all_37_cases_and_the_known_genai_prices_bugs() -> None:
    assert len(CASES) == 37
    assert [c.row for c in CASES if c.genai_prices_wrong] == [10, 29, 30, 36, 37]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"row{c.row}-{c.model}")
def test_reference_row_is_priced_at_list_price(case: Case) -> None:
    cost = price_usage(case.provider, case.model, case.usage, at=case.at, tier=case.tier)

    assert cost.total_usd == case.expected
    if case.expected is None:
        assert cost.breakdown is None
        return
    assert cost.breakdown is not None
    assert sum(cost.breakdown.values()) == cost.total_usd
    if case.genai_prices_wrong or cost.priced_model in CORRECTED_CARDS:
        assert cost.price_source == "tokenmeter-errata"
    else:
        assert cost.price_source == GENAI_PRICES_SOURCE


def test_azure_deployment_row_is_priced_like_gpt_4o_once_aliased() -> None:
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert price_usage("azure", "my-gpt4o-prod-deployment", usage).total_usd is None

    set_aliases({"my-gpt4o-prod-deployment": "gpt-4o"})
    cost = price_usage("azure", "my-gpt4o-prod-deployment", usage, at=RESEARCH_DAY)

    assert cost.total_usd == Decimal("0.0075")
    assert cost.priced_model == "gpt-4o"
