"""Tokens → cost: exact Decimals, overrides first, the genai-prices data otherwise, never a silent zero."""

from __future__ import annotations

from decimal import Decimal

import genai_prices
import pytest

from proxy.pricing import PriceOverride, Pricer
from proxy.usage import Usage

MINI = PriceOverride(
    input_per_mtok=Decimal("0.15"),
    cached_input_per_mtok=Decimal("0.075"),
    cache_write_per_mtok=Decimal("0"),
    output_per_mtok=Decimal("0.60"),
)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(input_tokens=1000, output_tokens=500), Decimal("0.00045")),
        # (800 * 0.15 + 200 * 0.075 + 500 * 0.60) / 1e6
        (Usage(input_tokens=1000, cached_tokens=200, output_tokens=500), Decimal("0.000435")),
        (Usage(input_tokens=1, output_tokens=0), Decimal("0.00000015")),
        (Usage(), Decimal("0")),
    ],
)
def test_override_formula_is_exact(usage: Usage, expected: Decimal) -> None:
    cost, status = Pricer({"gpt-4o-mini": MINI}).price("openai", "gpt-4o-mini", usage)
    assert status == "priced"
    assert cost == expected
    assert isinstance(cost, Decimal)


def test_override_cache_write_rate() -> None:
    override = PriceOverride(
        input_per_mtok=Decimal("3"),
        cached_input_per_mtok=Decimal("0.30"),
        cache_write_per_mtok=Decimal("3.75"),
        output_per_mtok=Decimal("15"),
    )
    usage = Usage(input_tokens=10_000, cached_tokens=6_000, cache_write_tokens=3_000, output_tokens=100)
    cost, _ = Pricer({"m": override}).price("anthropic", "m", usage)
    # (1000 * 3 + 6000 * 0.30 + 3000 * 3.75 + 100 * 15) / 1e6
    assert cost == Decimal("0.01755")


def test_override_takes_precedence_over_the_price_data() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    table, _ = Pricer({}).price("openai", "gpt-4o-mini", usage)
    override, _ = Pricer(
        {"gpt-4o-mini": PriceOverride(input_per_mtok=Decimal("9"), output_per_mtok=Decimal("9"))}
    ).price("openai", "gpt-4o-mini", usage)
    assert override == Decimal("9") != table


@pytest.mark.parametrize(
    ("model", "usage", "expected"),
    [
        # gpt-4o: $2.50 / MTok input, $1.25 cached input, $10 / MTok output (OpenAI's price list)
        ("gpt-4o", Usage(input_tokens=1000, output_tokens=100), Decimal("0.0035")),
        ("gpt-4o", Usage(input_tokens=1000, cached_tokens=200, output_tokens=100), Decimal("0.00325")),
        # gpt-4o-mini: $0.15 input, $0.60 output
        ("gpt-4o-mini", Usage(input_tokens=1000, output_tokens=100), Decimal("0.00021")),
    ],
)
def test_price_table(model: str, usage: Usage, expected: Decimal) -> None:
    cost, status = Pricer({}).price("openai", model, usage)
    assert (cost, status) == (expected, "priced")
    direct = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens, cache_read_tokens=usage.cached_tokens, output_tokens=usage.output_tokens
        ),
        model_ref=model,
        provider_id="openai",
    )
    assert cost == direct.total_price


def test_unknown_model_is_unpriced_never_zero() -> None:
    pricer = Pricer({})
    for _ in range(2):  # the second answer comes from the miss cache
        assert pricer.price("openai", "no-such-model-anywhere", Usage(input_tokens=5)) == (None, "unpriced")
