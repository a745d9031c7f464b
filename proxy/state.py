"""What every request shares: the config, the one upstream client, keys, routes, ledger and prices."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from proxy import headers as h
from proxy.asgi_types import Scope
from proxy.config import Config
from proxy.drain import Drain
from proxy.keepalive import KeepAlive
from proxy.ledger import Ledger
from proxy.observe import Observer
from proxy.pricing import Pricer
from proxy.providers.base import Dialect
from proxy.routing import KeyRing, Router
from proxy.upstream import UpstreamClient


@dataclass(slots=True)
class ProxyState:
    config: Config
    client: UpstreamClient
    router: Router
    keys: KeyRing
    ledger: Ledger
    pricer: Pricer
    # Whether HTTP/1.1 responses can carry trailers (serving.install_http11_trailers succeeded).
    http11_trailers: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("teeproxy"))
    observers: list[Observer] = field(default_factory=list)
    keepalive: KeepAlive = field(init=False)
    drain: Drain = field(init=False)
    _models_bodies: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keepalive = KeepAlive(self.config.server.keepalive_ping_s)
        self.drain = Drain()

    @property
    def metering(self) -> bool:
        return self.config.metering.enabled

    def trailers_for(self, scope: Scope) -> bool:
        """Billing trailers go out when the client asked (`TE: trailers`) and the protocol can carry them."""
        if not self.metering:
            return False
        version: str = scope.get("http_version", "1.1")
        if version == "1.1" and not self.http11_trailers:
            return False
        return h.wants_trailers(scope["headers"], version)

    def models_body(self, dialect: Dialect) -> bytes:
        body = self._models_bodies.get(dialect.name)
        if body is None:
            body = self._models_bodies[dialect.name] = dialect.models_body(self.router.model_ids(dialect.name))
        return body
