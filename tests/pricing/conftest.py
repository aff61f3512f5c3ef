from collections.abc import Iterator

import pytest

from tokenmeter.pricing import clear_cache, set_aliases, set_price_source, set_user_prices


@pytest.fixture(autouse=True)
def fresh_pricing() -> Iterator[None]:
    """Every test starts and ends with no overrides, no aliases, the default source, no cache."""
    set_user_prices(None)
    set_aliases(None)
    set_price_source(None)
    clear_cache()
    yield
    set_user_prices(None)
    set_aliases(None)
    set_price_source(None)
    clear_cache()
