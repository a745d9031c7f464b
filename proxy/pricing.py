"""Tokens → cost in USD, as an exact Decimal.

Prices come from the `genai-prices` package (maintained price data, with cache-read/cache-write and tiered
prices), unless the config overrides a model, which takes precedence:

    cost = ((input - cached - cache_write) * input_per_mtok
            + cached * cached_input_per_mtok
            + cache_write * cache_write_per_mtok
            + output * output_per_mtok) / 1,000,000

`input` includes cache reads and writes (proxy.usage), and genai-prices' `input_tokens` means the same, so a
Usage maps onto it field for field (with Anthropic's one-hour cache writes priced apart).

Which provider's prices: `[[providers]] pricing_provider` when set; else the genai-prices provider whose API
URL pattern matches the provider's base_url (DeepSeek, xAI, Mistral, Groq, OpenRouter, Together, ...); else the
dialect's own provider (a local vLLM speaking OpenAI's dialect is priced as OpenAI's models of that name).

A model with no price anywhere gets no cost and the status "unpriced", never a silent 0. There is no float
anywhere on this path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

import genai_prices
import genai_prices.types
import msgspec
from genai_prices import data as price_data
from genai_prices import data_snapshot as price_snapshot

from proxy.usage import Usage

if TYPE_CHECKING:
    from proxy.config import ProviderConfig

CostStatus = Literal["priced", "unpriced"]
MTOK = Decimal(1_000_000)

# Our dialect names → genai-prices provider ids.
_DIALECT_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google", "bedrock": "aws"}


def price_provider_id(provider: ProviderConfig) -> str:
    """The genai-prices provider whose prices apply to `provider`'s models."""
    if provider.pricing_provider:
        return provider.pricing_provider
    for known in price_data.providers:
        if known.api_pattern and re.match(known.api_pattern, provider.base_url):
            return known.id
    return _DIALECT_PROVIDER_IDS.get(provider.dialect, provider.dialect)


class PriceOverride(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """USD per million tokens. Cache prices default to the input price when not given."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal:
        cached_rate = self.cached_input_per_mtok if self.cached_input_per_mtok is not None else self.input_per_mtok
        write_rate = self.cache_write_per_mtok if self.cache_write_per_mtok is not None else self.input_per_mtok
        uncached = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
        total = (
            uncached * self.input_per_mtok
            + usage.cached_tokens * cached_rate
            + usage.cache_write_tokens * write_rate
            + usage.output_tokens * self.output_per_mtok
        )
        return total / MTOK


# The price fields a normalized Usage can incur. A model whose price list has only these, as plain Decimals, is
# priced here directly (one multiply-add per field); anything else (tiers, time-conditional prices, per-request
# fees, modality prices) goes through genai-prices' general calculation. Both give the same Decimal: a property
# test checks it over the whole price list.
_SIMPLE_FIELDS = frozenset({"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok"})


@dataclass(frozen=True, slots=True)
class _SimplePrice:
    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal | None
    cache_write_mtok: Decimal | None
    cache_write_1h_mtok: Decimal | None

    def cost(self, usage: Usage) -> Decimal | None:
        """None when the usage needs a price this model does not list (genai-prices then decides)."""
        if usage.cached_tokens and self.cache_read_mtok is None:
            return None
        if usage.cache_write_tokens and self.cache_write_mtok is None:
            return None
        if usage.cache_write_1h_tokens and self.cache_write_1h_mtok is None:
            return None
        uncached = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
        if uncached < 0:
            return None
        total = uncached * self.input_mtok + usage.output_tokens * self.output_mtok
        if usage.cached_tokens:
            assert self.cache_read_mtok is not None
            total += usage.cached_tokens * self.cache_read_mtok
        if usage.cache_write_tokens:
            assert self.cache_write_mtok is not None
            five_minutes = usage.cache_write_tokens - usage.cache_write_1h_tokens
            total += five_minutes * self.cache_write_mtok
            if usage.cache_write_1h_tokens:
                assert self.cache_write_1h_mtok is not None
                total += usage.cache_write_1h_tokens * self.cache_write_1h_mtok
        return total / MTOK


def _simple_price(provider_id: str, model: str) -> _SimplePrice | None:
    """The model's price when it is a fixed list of the simple fields; None otherwise (or when unknown)."""
    try:
        _, info = price_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return None
    prices = info.prices
    if not isinstance(prices, genai_prices.types.ModelPrice):
        return None  # conditional (time-dependent) prices: resolved per request by genai-prices
    fields = {
        name: value
        for name, value in vars(prices).items()
        if not name.startswith("_") and value is not None and not name.endswith("_searches_kcount")
    }  # search prices apply to search counts, which a normalized Usage never reports
    if not set(fields) <= _SIMPLE_FIELDS or not all(isinstance(v, Decimal) for v in fields.values()):
        return None
    if "input_mtok" not in fields or "output_mtok" not in fields:
        return None
    return _SimplePrice(
        fields["input_mtok"],
        fields["output_mtok"],
        fields.get("cache_read_mtok"),
        fields.get("cache_write_mtok"),
        fields.get("cache_write_1h_mtok"),
    )


class Pricer:
    def __init__(self, overrides: dict[str, PriceOverride]) -> None:
        self._overrides = overrides
        # genai-prices matches model names against its data on every call; remember the misses so an
        # unpriced model costs one lookup, not one per request.
        self._unpriced: set[tuple[str, str]] = set()
        self._provider_ids: dict[str, str] = {}
        # (provider id, model) -> its fixed simple price, or None to use genai-prices' general calculation.
        self._simple: dict[tuple[str, str], _SimplePrice | None] = {}

    def price(self, provider: ProviderConfig, model: str, usage: Usage) -> tuple[Decimal | None, CostStatus]:
        override = self._overrides.get(model)
        if override is not None:
            return override.cost(usage), "priced"
        provider_id = self._provider_ids.get(provider.name)
        if provider_id is None:
            provider_id = self._provider_ids[provider.name] = price_provider_id(provider)
        key = (provider_id, model)
        if key in self._unpriced:
            return None, "unpriced"
        if key in self._simple:
            simple = self._simple[key]
        else:
            simple = _simple_price(provider_id, model)
            if len(self._simple) < 10_000:
                self._simple[key] = simple
        if simple is not None:
            cost = simple.cost(usage)
            if cost is not None:
                return cost, "priced"
        return self._general(key, usage)

    def _general(self, key: tuple[str, str], usage: Usage) -> tuple[Decimal | None, CostStatus]:
        provider_id, model = key
        try:
            calc = genai_prices.calc_price(
                genai_prices.Usage(
                    input_tokens=usage.input_tokens,
                    cache_read_tokens=usage.cached_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    cache_write_1h_tokens=usage.cache_write_1h_tokens or None,
                    output_tokens=usage.output_tokens,
                ),
                model_ref=model,
                provider_id=provider_id,
            )
        except LookupError:
            if len(self._unpriced) < 10_000:
                self._unpriced.add(key)
            return None, "unpriced"
        return Decimal(calc.total_price), "priced"
