"""The configs in config/ work as shipped: each provider block is valid, each route reaches its provider in its
dialect, and each provider's models are priced from that provider's own price list."""

from __future__ import annotations

import pathlib

import pytest

from proxy.config import load_config
from proxy.pricing import Pricer, price_provider_id
from proxy.routing import Router
from proxy.usage import Usage

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "config"

# (model a client sends, dialect it speaks, provider that must serve it, genai-prices id, priced?)
CASES = [
    ("gpt-4o-mini", "openai", "openai", "openai", True),
    ("claude-sonnet-4-20250514", "anthropic", "anthropic", "anthropic", True),
    ("gemini-2.5-flash", "gemini", "google", "google", True),
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", "bedrock", "bedrock", "aws", True),
    ("deepseek-chat", "openai", "deepseek", "deepseek", True),
    ("grok-4", "openai", "xai", "x-ai", True),
    ("mistral-large-latest", "openai", "mistral", "mistral", True),
    ("qwen-max", "openai", "qwen", "openai", False),
    ("llama-3.3-70b-versatile", "openai", "groq", "groq", True),
    ("openai/gpt-4o", "openai", "openrouter", "openrouter", True),
    ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "openai", "together", "together", True),
    ("HuggingFaceTB/SmolLM3-3B:hf", "openai", "huggingface", "openai", False),
    ("local/my-model", "openai", "vllm", "openai", False),
    ("llama3.2", "openai", "ollama", "openai", False),
]


@pytest.mark.parametrize(("model", "dialect", "provider", "price_id", "priced"), CASES, ids=[c[0] for c in CASES])
def test_providers_toml_routes_and_prices_each_provider(
    model: str, dialect: str, provider: str, price_id: str, priced: bool
) -> None:
    config = load_config(CONFIG / "providers.toml")
    upstream = Router(config).select(model, dialect)
    assert upstream.provider.name == provider
    assert upstream.provider.dialect == dialect
    assert price_provider_id(upstream.provider) == price_id
    cost, status = Pricer({}).price(upstream.provider, model, Usage(input_tokens=1000, output_tokens=100))
    assert (status == "priced") is priced
    assert (cost is not None and cost > 0) is priced


def test_mistral_is_never_sent_stream_options() -> None:
    config = load_config(CONFIG / "providers.toml")
    assert {p.name for p in config.providers if not p.stream_options} == {"mistral"}


def test_teeproxy_toml_serves_every_dialect() -> None:
    config = load_config(CONFIG / "teeproxy.toml")
    router = Router(config)
    for model, dialect in [
        ("gpt-4o-mini", "openai"),
        ("claude-haiku-4-5", "anthropic"),
        ("gemini-2.5-flash", "gemini"),
        ("anthropic.claude-3-5-haiku-20241022-v1:0", "bedrock"),
    ]:
        assert router.select(model, dialect).provider.dialect == dialect
