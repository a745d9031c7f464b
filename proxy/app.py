"""The raw ASGI callable: the hot path goes straight to `forward.handle`; a few admin paths to starlette.

Admin paths: `/healthz`, `/metrics`, `/admin` and everything under `/admin/` (proxy.admin). Every other path is
the hot path, checked with one set lookup and one prefix test.

Lifespan owns the shared resources: the one upstream client, the ledger (flushed on shutdown), the demo
upstream when it serves, and the observers that hear about every request (proxy.observe): metrics always, the
live view's publisher always, the access log when `[log] access` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile

from proxy import collector, cors, forward
from proxy.access_log import AccessLog
from proxy.admin import build_admin
from proxy.asgi_types import Receive, Scope, Send
from proxy.collector import GcWatch, IdleCollector
from proxy.config import Config
from proxy.demo import DemoUpstream
from proxy.errors import StartupError
from proxy.ledger import open_ledger
from proxy.live import LIVE_DIR_ENV, LivePublisher
from proxy.metrics import SAMPLE_INTERVAL_S, Metrics
from proxy.observe import Observer
from proxy.pricing import Pricer
from proxy.routing import KeyRing, Router, demo_wanted, describe_upstreams
from proxy.state import ProxyState
from proxy.upstream import make_client

log = logging.getLogger("teeproxy")

ADMIN_PATHS = frozenset({"/healthz", "/metrics", "/admin"})
ADMIN_PREFIX = "/admin/"


class TeeProxy:
    def __init__(self, config: Config, http11_trailers: bool = False, tune_gc: bool = False) -> None:
        self.config = config
        self.http11_trailers = http11_trailers
        # A server process sets the collector for a relay once started (proxy.collector); an app embedded in
        # another process (the tests') leaves that process's collector alone.
        self.tune_gc = tune_gc
        self._gc_watch = GcWatch()
        self.idle_collector = IdleCollector() if tune_gc else None
        self.state: ProxyState | None = None
        self.metrics = Metrics()
        # Where this run's workers publish live events: $TEEPROXY_LIVE_DIR (N workers, made by proxy.serving),
        # else a directory of this app's own, made at start-up.
        self.live_dir: str | None = None
        self._own_live_dir = False
        # Set when the server begins to stop: long-lived admin streams (the live view) end at once, so the
        # graceful shutdown waits only for real requests.
        self.stopping = asyncio.Event()
        self.admin = build_admin(self)
        self._demo: DemoUpstream | None = None
        self._closers: list[AccessLog | LivePublisher] = []
        self._sampler: asyncio.Task[None] | None = None
        self.startup_error: StartupError | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if self.config.server.cors_origins:
                origin = cors.allowed_origin(scope, self.config.server.cors_origins)
                if origin is not None:
                    if scope["method"] == "OPTIONS":
                        await cors.preflight(scope, send, origin)
                        return
                    send = cors.with_cors(send, origin)
            if path in ADMIN_PATHS or path.startswith(ADMIN_PREFIX) or self.state is None:
                await self.admin(scope, receive, send)
            else:
                await forward.handle(self.state, scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            # No LLM API here speaks WebSocket: refuse the upgrade (hypercorn answers 403) rather than leave it.
            await receive()
            await send({"type": "websocket.close", "code": 1008})

    async def startup(self) -> None:
        demo_url = None
        if demo_wanted(self.config):
            self._demo = DemoUpstream(tokens_per_s=self.config.demo.tokens_per_s)
            await self._demo.server.start()
            demo_url = self._demo.server.root_url
            log.warning(
                "no provider key in the environment: every model is served by the demo upstream at %s", demo_url
            )
        for line in describe_upstreams(self.config, demo_url):
            log.info(line)
        ledger = open_ledger(self.config.ledger.path, self.config.ledger.url)
        try:
            await ledger.start()
        except Exception as exc:
            where = self.config.ledger.path if self.config.ledger.url is None else "the [ledger] url"
            raise StartupError(f"cannot open the ledger at {where}: {exc}") from exc
        self.state = ProxyState(
            config=self.config,
            client=make_client(),
            router=Router(self.config, demo_url),
            keys=KeyRing(self.config),
            ledger=ledger,
            pricer=Pricer(self.config.prices),
            http11_trailers=self.http11_trailers,
            observers=self._observers(),
        )
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever(), name="metrics-sampler")
        if self.tune_gc:
            collector.tune()
        self._gc_watch.install()

    def _observers(self) -> list[Observer]:
        self.stopping.clear()
        self.live_dir = os.environ.get(LIVE_DIR_ENV)
        if self.live_dir is None:
            self.live_dir = tempfile.mkdtemp(prefix="teeproxy-live-")
            self._own_live_dir = True
        publisher = LivePublisher(self.live_dir)
        observers: list[Observer] = [self.metrics, publisher]
        self._closers = [publisher]
        if self.config.log.access:
            access = AccessLog(self.config.log.access_path)
            observers.append(access)
            self._closers.append(access)
        return observers

    async def _sample_forever(self) -> None:
        """This worker's ledger queue into the metrics: other workers serve scrapes too, and read it from there."""
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def sample(self) -> None:
        """This worker's figures into the metrics (every second, and when a scrape is served); a full collection
        of the garbage collector when the worker is idle (`proxy.collector.IdleCollector`)."""
        state = self.state
        if self.idle_collector is not None and state is not None:
            self.idle_collector.maybe_collect(state.drain.inflight, state.drain.started)
        self.metrics.sample(state.ledger if state is not None else None, self._gc_watch.drain())

    def begin_shutdown(self) -> None:
        """A stop signal (proxy.serving): end the live view's streams now, and drain the proxied requests
        (proxy.drain): the first call starts the grace period, a later one ends what is left at once."""
        self.stopping.set()
        if self.state is not None:
            self.state.drain.begin(self.config.server.graceful_timeout_s)

    async def shutdown(self) -> None:
        self.stopping.set()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        state, self.state = self.state, None
        if state is not None:
            await state.client.aclose()
            await state.keepalive.aclose()
            await state.ledger.aclose()
            self.metrics.sample(state.ledger, self._gc_watch.drain())
        self._gc_watch.uninstall()
        for closer in self._closers:
            closer.close()
        self._closers = []
        self.metrics.close()
        if self._own_live_dir and self.live_dir is not None:
            shutil.rmtree(self.live_dir, ignore_errors=True)
        self.live_dir, self._own_live_dir = None, False
        if self._demo is not None:
            await self._demo.server.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except StartupError as exc:
                    log.error("start-up failed: %s", exc)
                    self.startup_error = exc
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
