"""Which provider serves a request: model routes and client keys.

Nothing the client sends chooses a host: the path picks a dialect and one of its fixed endpoints, the model
picks a route from the config, and the route names providers whose base_url the config fixed. A route serves a
dialect only through providers that speak it: there is no translation between dialects.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os

from proxy.config import Config, ProviderConfig
from proxy.errors import ModelNotFound, Unauthorized
from proxy.providers.base import Upstream

# Distinct model strings remembered per worker; past this, lookups are recomputed rather than remembered.
MAX_CACHED_MODELS = 4096
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
        self._routes = [(route.models, [self._providers[name] for name in route.providers]) for route in config.routes]
        self._demo_root_url = demo_root_url
        self._cache: dict[tuple[str, str], Upstream] = {}

    def select(self, model: str, dialect: str) -> Upstream:
        key = (dialect, model)
        upstream = self._cache.get(key)
        if upstream is None:
            upstream = self._select(model, dialect)
            if len(self._cache) < MAX_CACHED_MODELS:
                self._cache[key] = upstream
        return upstream

    def _select(self, model: str, dialect: str) -> Upstream:
        for patterns, providers in self._routes:
            speaking = [p for p in providers if p.dialect == dialect]
            if not speaking or not any(fnmatch.fnmatchcase(model, pattern) for pattern in patterns):
                continue
            # Failover over the rest of `speaking` comes later; the first one serves.
            provider = speaking[0]
            if self._demo_root_url is not None:
                demo = ProviderConfig(
                    name="demo", dialect=provider.dialect, base_url=demo_base_url(self._demo_root_url, dialect)
                )
                return Upstream(demo, demo.base_url, DEMO_UPSTREAM_KEY)
            key = os.environ.get(provider.api_key_env) if provider.api_key_env else None
            return Upstream(provider, provider.base_url.rstrip("/"), key)
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.")

    def model_ids(self, dialect: str) -> list[tuple[str, str]]:
        """(model id or pattern, provider name) of the routes that serve `dialect`, for the model lists."""
        out: list[tuple[str, str]] = []
        for patterns, providers in self._routes:
            speaking = [p for p in providers if p.dialect == dialect]
            if speaking:
                owner = "demo" if self._demo_root_url is not None else speaking[0].name
                out.extend((pattern, owner) for pattern in patterns)
        return out


def demo_wanted(config: Config) -> bool:
    """The demo upstream serves when the config allows it and no provider key is in the environment."""
    if not config.demo.when_no_keys:
        return False
    return not any(p.api_key_env and os.environ.get(p.api_key_env) for p in config.providers)
