"""The raw ASGI callable: the hot path goes straight to `forward.handle`; a few admin paths to starlette.

Lifespan owns the shared resources: the one upstream client, the ledger (flushed on shutdown), and the demo
upstream when it serves.
"""

from __future__ import annotations

import logging

from proxy import forward
from proxy.admin import build_admin
from proxy.asgi_types import Receive, Scope, Send
from proxy.config import Config
from proxy.demo import DemoUpstream
from proxy.ledger import open_ledger
from proxy.pricing import Pricer
from proxy.routing import KeyRing, Router, demo_wanted
from proxy.state import ProxyState
from proxy.upstream import make_client

log = logging.getLogger("teeproxy")

ADMIN_PATHS = frozenset({"/healthz"})


class TeeProxy:
    def __init__(self, config: Config, http11_trailers: bool = False) -> None:
        self.config = config
        self.http11_trailers = http11_trailers
        self.state: ProxyState | None = None
        self.admin = build_admin()
        self._demo: DemoUpstream | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] in ADMIN_PATHS or self.state is None:
                await self.admin(scope, receive, send)
            else:
                await forward.handle(self.state, scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def startup(self) -> None:
        demo_url = None
        if demo_wanted(self.config):
            self._demo = DemoUpstream(tokens_per_s=self.config.demo.tokens_per_s)
            await self._demo.server.start()
            demo_url = self._demo.server.root_url
            log.warning(
                "no provider key in the environment: every model is served by the demo upstream at %s", demo_url
            )
        ledger = open_ledger(self.config.ledger.path, self.config.ledger.url)
        await ledger.start()
        self.state = ProxyState(
            config=self.config,
            client=make_client(),
            router=Router(self.config, demo_url),
            keys=KeyRing(self.config),
            ledger=ledger,
            pricer=Pricer(self.config.prices),
            http11_trailers=self.http11_trailers,
        )

    async def shutdown(self) -> None:
        state, self.state = self.state, None
        if state is not None:
            await state.client.aclose()
            await state.ledger.aclose()
        if self._demo is not None:
            await self._demo.server.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
