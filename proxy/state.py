"""What every request shares: the config, the one upstream client, keys, routes, ledger and prices."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httpx
import msgspec

from proxy import headers as h
from proxy.asgi_types import Scope
from proxy.config import Config
from proxy.ledger import Ledger
from proxy.pricing import Pricer
from proxy.routing import KeyRing, Router, endpoint_for


class _Model(msgspec.Struct):
    id: str
    owned_by: str
    object: str = "model"
    created: int = 0


class _ModelList(msgspec.Struct):
    data: list[_Model]
    object: str = "list"


@dataclass(slots=True)
class ProxyState:
    config: Config
    client: httpx.AsyncClient
    router: Router
    keys: KeyRing
    ledger: Ledger
    pricer: Pricer
    # Whether HTTP/1.1 responses can carry trailers (serving.install_http11_trailers succeeded).
    http11_trailers: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("teeproxy"))
    _models_body: bytes = b""

    @property
    def metering(self) -> bool:
        return self.config.metering.enabled

    def endpoint_for(self, path: str, method: str) -> str:
        return endpoint_for(path, method)

    def trailers_for(self, scope: Scope) -> bool:
        """Billing trailers go out when the client asked (`TE: trailers`) and the protocol can carry them."""
        if not self.metering:
            return False
        version: str = scope.get("http_version", "1.1")
        if version == "1.1" and not self.http11_trailers:
            return False
        return h.wants_trailers(scope["headers"], version)

    def models_body(self) -> bytes:
        if not self._models_body:
            models = [_Model(id=model, owned_by=owner) for model, owner in self.router.model_ids()]
            self._models_body = msgspec.json.encode(_ModelList(data=models))
        return self._models_body
