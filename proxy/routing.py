"""Which provider serves a request: model routes and client keys.

Nothing the client sends chooses a host: the path picks a dialect and one of its fixed endpoints, the model
picks a route from the config, and the route names providers whose base_url the config fixed. A route serves a
dialect only through providers that speak it: there is no translation between dialects.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re

from proxy.config import Config, ProviderConfig, RouteConfig
from proxy.errors import ModelNotFound, Unauthorized
from proxy.failover import Plan
from proxy.providers.base import Upstream

# Distinct model strings remembered per worker; past this, lookups are recomputed rather than remembered.
MAX_CACHED_MODELS = 4096
# What the demo upstream calls itself in each dialect (it answers to any model name).
DEMO_MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "bedrock": "anthropic.claude-3-5-haiku-20241022-v1:0",
}
_GLOB = re.compile(r"[*?\[]")
# The demo upstream takes any credentials; sending one keeps every dialect on its key path (Bedrock: bearer
# rather than SigV4, which would need AWS credentials a newcomer does not have).
DEMO_UPSTREAM_KEY = "demo-upstream-key"


class KeyRing:
    """Client keys, stored as SHA-256 digests only; the key itself is never kept."""

    def __init__(self, config: Config) -> None:
        self._names = {key.sha256.lower(): key.name for key in config.keys}

    def authenticate(self, presented: bytes | None) -> str:
        """The key's name, or Unauthorized. Where the key was found is the dialect's business."""
        if not presented:
            raise Unauthorized("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        key_name = self._names.get(hashlib.sha256(presented).hexdigest())
        if key_name is None:
            raise Unauthorized("Incorrect API key provided.")
        return key_name


def demo_base_url(root_url: str, dialect: str) -> str:
    """The demo upstream serves every dialect; OpenAI's base_url includes its /v1 like the real one."""
    return root_url + "/v1" if dialect == "openai" else root_url


class Router:
    def __init__(self, config: Config, demo_root_url: str | None = None) -> None:
        self._providers = {p.name: p for p in config.providers}
        self._routes = [(route, [self._providers[name] for name in route.providers]) for route in config.routes]
        self._demo_root_url = demo_root_url
        self._priced = list(config.prices)
        self._cache: dict[tuple[str, str], Plan] = {}

    def select(self, model: str, dialect: str) -> Upstream:
        """The first attempt's provider (in config order)."""
        return self.plan(model, dialect).upstreams[0]

    def plan(self, model: str, dialect: str) -> Plan:
        key = (dialect, model)
        plan = self._cache.get(key)
        if plan is None:
            plan = self._plan(model, dialect)
            if len(self._cache) < MAX_CACHED_MODELS:
                self._cache[key] = plan
        return plan

    def _plan(self, model: str, dialect: str) -> Plan:
        for route, providers in self._routes:
            if not any(fnmatch.fnmatchcase(model, pattern) for pattern in route.models):
                continue
            speaking = [(i, p) for i, p in enumerate(providers) if p.dialect == dialect]
            if speaking:
                return self._plan_for(route, speaking, dialect)
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.")

    def _plan_for(self, route: RouteConfig, speaking: list[tuple[int, ProviderConfig]], dialect: str) -> Plan:
        if self._demo_root_url is not None:
            demo = ProviderConfig(
                name="demo", dialect=speaking[0][1].dialect, base_url=demo_base_url(self._demo_root_url, dialect)
            )
            return Plan((Upstream(demo, demo.base_url, DEMO_UPSTREAM_KEY),), None, 1, route.gate_first_chunk)
        upstreams = tuple(
            Upstream(p, p.base_url.rstrip("/"), os.environ.get(p.api_key_env) if p.api_key_env else None)
            for _, p in speaking
        )
        weights = tuple(route.weights[i] for i, _ in speaking) if route.weights is not None else None
        if weights is not None and not any(weights):
            weights = None
        return Plan(upstreams, weights, route.max_attempts or len(upstreams), route.gate_first_chunk)

    def model_ids(self, dialect: str) -> list[tuple[str, str]]:
        """(model id, provider name) for the model lists: concrete ids only, never a route's glob. They come from
        routes that name a model exactly, models priced in `[prices]` that a route of this dialect serves, and,
        with the demo upstream, the demo's own model for the dialect."""
        out: dict[str, str] = {}
        if self._demo_root_url is not None and dialect in DEMO_MODELS:
            out[DEMO_MODELS[dialect]] = "demo"
        for route, providers in self._routes:
            speaking = [p for p in providers if p.dialect == dialect]
            if not speaking:
                continue
            owner = "demo" if self._demo_root_url is not None else speaking[0].name
            for pattern in route.models:
                if not _GLOB.search(pattern):
                    out.setdefault(pattern, owner)
            for model in self._priced:
                if any(fnmatch.fnmatchcase(model, pattern) for pattern in route.models):
                    out.setdefault(model, owner)
        return list(out.items())


def demo_wanted(config: Config) -> bool:
    """The demo upstream serves when the config allows it and no provider key is in the environment."""
    if not config.demo.when_no_keys:
        return False
    return not any(p.api_key_env and os.environ.get(p.api_key_env) for p in config.providers)


def describe_upstreams(config: Config, demo_url: str | None) -> list[str]:
    """One start-up log line per provider: where its requests go, and with which key (named, never shown).

    Setting one provider's key turns the demo off for every provider (`demo_wanted`); these lines make that
    visible, naming the providers left without a key and the variable that turned the demo off.
    """
    lines = []
    set_keys = [p.api_key_env for p in config.providers if p.api_key_env and os.environ.get(p.api_key_env)]
    for p in config.providers:
        head = f"provider {p.name} ({p.dialect})"
        if demo_url is not None:
            lines.append(f"{head}: demo upstream at {demo_base_url(demo_url, p.dialect)} (no provider key is set)")
            continue
        if p.api_key_env is None:
            key = "SigV4 from botocore's credential chain" if p.dialect == "bedrock" else "no key configured"
        elif os.environ.get(p.api_key_env):
            key = f"key from ${p.api_key_env}"
        elif p.dialect == "bedrock":
            key = f"${p.api_key_env} is not set: SigV4 from botocore's credential chain"
        else:
            key = f"${p.api_key_env} is not set: the provider will refuse its requests"
        why = ""
        if config.demo.when_no_keys and set_keys and (p.api_key_env is None or p.api_key_env not in set_keys):
            names = ", ".join("$" + name for name in set_keys)
            why = f"; the demo upstream is off because {names} {'is' if len(set_keys) == 1 else 'are'} set"
        lines.append(f"{head}: {p.base_url.rstrip('/')}, {key}{why}")
    return lines
