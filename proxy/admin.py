"""The admin mount: everything that is not the hot path. Starlette routes, off the /v1 prefix.

    GET /healthz        {"status": "ok"}, no key
    GET /metrics        Prometheus text, every worker's figures (proxy.metrics); no key unless
                        `[admin] metrics_need_key = true`
    GET /admin/         the live page (proxy/static/): static files, no key; the page asks for the admin key
    GET /admin/live     server-sent events from every worker (proxy.live); admin key
    GET /admin/usage    spend totals from the ledger (proxy.admin_spend); admin key

The admin key is `[admin] key_sha256`'s, sent as `Authorization: Bearer` (`proxy.spend.check_admin_key`: client
keys are refused, and with no admin key configured every admin request is). The page sends it from JavaScript
(`fetch` with a header, not `EventSource`, which cannot send one), so it never sits in a URL or a cookie.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from proxy import live
from proxy.admin_spend import Unavailable, spend_routes
from proxy.config import Config
from proxy.errors import NotFound, ProxyError, Unauthorized
from proxy.metrics import CONTENT_TYPE, Metrics
from proxy.providers.openai import error_body
from proxy.spend import check_admin_key
from proxy.state import ProxyState

STATIC_DIR = pathlib.Path(__file__).parent / "static"


class Operated(Protocol):
    """What the admin routes read from the app (`proxy.app.TeeProxy`)."""

    config: Config
    metrics: Metrics
    state: ProxyState | None
    live_dir: str | None
    stopping: asyncio.Event

    def sample(self) -> None: ...


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _not_found(request: Request, exc: Exception) -> Response:
    error = NotFound(f"Unknown request URL: {request.method} {request.url.path}. Please check the URL for typos.")
    return Response(error_body(error), status_code=404, media_type="application/json")


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    headers = {"www-authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return Response(error_body(exc), status_code=exc.status, media_type="application/json", headers=headers)


def admin_routes(app: Operated) -> list[BaseRoute]:
    async def metrics(request: Request) -> Response:
        if app.config.admin.metrics_need_key:
            check_admin_key(request.headers, app.config)
        app.sample()
        return Response(app.metrics.render(), media_type=CONTENT_TYPE)

    async def live_events(request: Request) -> Response:
        check_admin_key(request.headers, app.config)
        if app.live_dir is None:
            raise Unavailable("The live view is not running (the proxy is starting or stopping).")
        since = request.query_params.get("since")
        try:
            since_t = None if since is None else float(since)
        except ValueError:
            since_t = None
        if since_t is not None and not since_t > time.time() - live.HISTORY_S:
            since_t = None  # at most the last hour, whatever was asked
        return StreamingResponse(
            live.event_stream(app.live_dir, since_t, app.stopping),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    return [
        Route("/metrics", metrics),
        Route("/admin/live", live_events),
        *spend_routes(lambda: app.state),
        # Last: the page's files answer whatever under /admin/ no route above took.
        Mount("/admin", StaticFiles(directory=STATIC_DIR, html=True), name="page"),
    ]


def build_admin(app: Operated) -> Starlette:
    handlers: dict[int | type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
        404: _not_found,
        ProxyError: _refused,
    }
    return Starlette(routes=[Route("/healthz", _health), *admin_routes(app)], exception_handlers=handlers)
