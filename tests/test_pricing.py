"""Tokens → cost: exact Decimals, overrides first, the genai-prices data otherwise, never a silent zero."""

from __future__ import annotations

from decimal import Decimal

import genai_prices
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import ProviderConfig
from proxy.pricing import PriceOverride, Pricer, price_provider_id
from proxy.usage import Usage

OPENAI = ProviderConfig(name="openai", base_url="https://api.openai.com/v1")
ANTHROPIC = ProviderConfig(name="anthropic", dialect="anthropic", base_url="https://api.anthropic.com")

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
    cost, status = Pricer({"gpt-4o-mini": MINI}).price(OPENAI, "gpt-4o-mini", usage)
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
    cost, _ = Pricer({"m": override}).price(ANTHROPIC, "m", usage)
    # (1000 * 3 + 6000 * 0.30 + 3000 * 3.75 + 100 * 15) / 1e6
    assert cost == Decimal("0.01755")


def test_override_takes_precedence_over_the_price_data() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    table, _ = Pricer({}).price(OPENAI, "gpt-4o-mini", usage)
    override, _ = Pricer(
        {"gpt-4o-mini": PriceOverride(input_per_mtok=Decimal("9"), output_per_mtok=Decimal("9"))}
    ).price(OPENAI, "gpt-4o-mini", usage)
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
    cost, status = Pricer({}).price(OPENAI, model, usage)
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
        assert pricer.price(OPENAI, "no-such-model-anywhere", Usage(input_tokens=5)) == (None, "unpriced")


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        (ProviderConfig(name="d", base_url="https://api.deepseek.com/v1"), "deepseek"),
        (ProviderConfig(name="x", base_url="https://api.x.ai/v1"), "x-ai"),
        (ProviderConfig(name="m", base_url="https://api.mistral.ai/v1"), "mistral"),
        (ProviderConfig(name="g", base_url="https://api.groq.com/openai/v1"), "groq"),
        (ProviderConfig(name="o", base_url="https://openrouter.ai/api/v1"), "openrouter"),
        (ProviderConfig(name="t", base_url="https://api.together.xyz/v1"), "together"),
        (ProviderConfig(name="a", dialect="anthropic", base_url="https://api.anthropic.com"), "anthropic"),
        (ProviderConfig(name="gm", dialect="gemini", base_url="https://generativelanguage.googleapis.com"), "google"),
        (
            ProviderConfig(name="b", dialect="bedrock", base_url="https://bedrock-runtime.us-east-1.amazonaws.com"),
            "aws",
        ),
        # A local server speaking OpenAI's dialect: priced as the dialect's provider, unless the config says.
        (ProviderConfig(name="vllm", base_url="http://127.0.0.1:8000/v1"), "openai"),
        (ProviderConfig(name="q", base_url="http://127.0.0.1:8000/v1", pricing_provider="deepseek"), "deepseek"),
    ],
)
def test_each_provider_is_priced_from_its_own_price_list(provider: ProviderConfig, expected: str) -> None:
    assert price_provider_id(provider) == expected


def test_compatible_providers_models_are_priced_by_their_own_provider() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    deepseek = ProviderConfig(name="deepseek", base_url="https://api.deepseek.com")
    cost, status = Pricer({}).price(deepseek, "deepseek-chat", usage)
    direct = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1_000_000, output_tokens=1_000_000),
        model_ref="deepseek-chat",
        provider_id="deepseek",
    )
    assert status == "priced"
    assert cost == direct.total_price


def test_anthropic_one_hour_cache_writes_are_priced_apart() -> None:
    # Claude Sonnet 4: cache write 3.75 (5 min) vs 6.00 (1 h) USD per million tokens.
    pricer = Pricer({})
    five_minutes = Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000)
    one_hour = Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000, cache_write_1h_tokens=1_000_000)
    cost_5m, _ = pricer.price(ANTHROPIC, "claude-sonnet-4-20250514", five_minutes)
    cost_1h, _ = pricer.price(ANTHROPIC, "claude-sonnet-4-20250514", one_hour)
    assert (cost_5m, cost_1h) == (Decimal("3.75"), Decimal("6"))


def _catalogue() -> list[tuple[str, str]]:
    from genai_prices import data_snapshot

    return [(p.id, m.id) for p in data_snapshot.get_snapshot().providers for m in p.models]


@settings(max_examples=300, deadline=None)
@given(
    entry=st.sampled_from(_catalogue()),
    uncached=st.integers(0, 2_000_000),
    cached=st.integers(0, 500_000),
    written=st.integers(0, 500_000),
    one_hour_share=st.integers(0, 100),
    output=st.integers(0, 200_000),
)
def test_the_fast_path_prices_exactly_as_genai_prices(
    entry: tuple[str, str], uncached: int, cached: int, written: int, one_hour_share: int, output: int
) -> None:
    """Every model in the price data, any usage: the cached simple-price path gives genai-prices' own Decimal."""
    provider_id, model = entry
    one_hour = written * one_hour_share // 100
    usage = Usage(
        input_tokens=uncached + cached + written,
        cached_tokens=cached,
        cache_write_tokens=written,
        cache_write_1h_tokens=one_hour,
        output_tokens=output,
    )
    provider = ProviderConfig(name=provider_id, base_url="http://127.0.0.1:1", pricing_provider=provider_id)
    ours, status = Pricer({}).price(provider, model, usage)
    try:
        theirs = genai_prices.calc_price(
            genai_prices.Usage(
                input_tokens=usage.input_tokens,
                cache_read_tokens=cached,
                cache_write_tokens=written,
                cache_write_1h_tokens=one_hour or None,
                output_tokens=output,
            ),
            model_ref=model,
            provider_id=provider_id,
        ).total_price
    except LookupError:
        assert (ours, status) == (None, "unpriced")
        return
    assert status == "priced"
    assert ours == theirs
