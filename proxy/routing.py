"""Which provider serves a request: endpoints, model routes, client keys.

Nothing the client sends chooses a host: the path picks one of a fixed set of endpoints, the model picks a
route from the config, and the route names providers whose base_url the config fixed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass

from proxy.config import Config, ProviderConfig
from proxy.errors import MethodNotAllowed, ModelNotFound, NotFound, Unauthorized
from proxy.headers import Headers

# path -> (endpoint kind, method). The kind is what the dialect's meter needs to know.
OPENAI_ENDPOINTS: dict[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
}
MODELS_PATH = "/v1/models"


@dataclass(frozen=True, slots=True)
class Upstream:
    provider: ProviderConfig
    base_url: str
    api_key: str | None


def endpoint_for(path: str, method: str) -> str:
    kind = OPENAI_ENDPOINTS.get(path)
    if kind is None:
        if path == MODELS_PATH:
            if method != "GET":
                raise MethodNotAllowed(f"{method} is not allowed on {path}")
            return "models"
        raise NotFound(f"Unknown request URL: {method} {path}. Please check the URL for typos.")
    if method != "POST":
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use POST")
    return kind


class KeyRing:
    """Client keys, stored as SHA-256 digests only; the key itself is never kept."""

    def __init__(self, config: Config) -> None:
        self._names = {key.sha256.lower(): key.name for key in config.keys}

    def authenticate(self, headers: Headers) -> str:
        """The key's name, or Unauthorized. OpenAI SDKs send `Authorization: Bearer`, Anthropic's `x-api-key`."""
        presented: bytes | None = None
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = token.strip()
            elif name == b"x-api-key":
                presented = value.strip()
        if not presented:
            raise Unauthorized("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        key_name = self._names.get(hashlib.sha256(presented).hexdigest())
        if key_name is None:
            raise Unauthorized("Incorrect API key provided.")
        return key_name


class Router:
    def __init__(self, config: Config, demo_base_url: str | None = None) -> None:
        self._routes = [(route.models, route.providers) for route in config.routes]
        self._providers = {p.name: p for p in config.providers}
        self._demo = (
            ProviderConfig(name="demo", dialect="openai", base_url=demo_base_url) if demo_base_url is not None else None
        )
        self._cache: dict[str, Upstream] = {}

    def select(self, model: str) -> Upstream:
        upstream = self._cache.get(model)
        if upstream is None:
            upstream = self._select(model)
            if len(self._cache) < 4096:
                self._cache[model] = upstream
        return upstream

    def _select(self, model: str) -> Upstream:
        for patterns, providers in self._routes:
            if any(fnmatch.fnmatchcase(model, pattern) for pattern in patterns):
                # Failover over the rest of `providers` comes later; the first one serves.
                if self._demo is not None:
                    return Upstream(self._demo, self._demo.base_url.rstrip("/"), None)
                provider = self._providers[providers[0]]
                key = os.environ.get(provider.api_key_env) if provider.api_key_env else None
                return Upstream(provider, provider.base_url.rstrip("/"), key)
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.")

    def model_ids(self) -> list[tuple[str, str]]:
        """(model id or pattern, provider name) for GET /v1/models."""
        out: list[tuple[str, str]] = []
        for patterns, providers in self._routes:
            owner = "demo" if self._demo is not None else providers[0]
            out.extend((pattern, owner) for pattern in patterns)
        return out


def demo_wanted(config: Config) -> bool:
    """The demo upstream serves when the config allows it and no provider key is in the environment."""
    if not config.demo.when_no_keys:
        return False
    return not any(p.api_key_env and os.environ.get(p.api_key_env) for p in config.providers)
