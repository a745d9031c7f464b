"""The admin mount: everything that is not the hot path. Starlette routes, off the /v1 prefix."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.errors import NotFound
from proxy.providers.openai import error_body


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _not_found(request: Request, exc: Exception) -> Response:
    error = NotFound(f"Unknown request URL: {request.method} {request.url.path}. Please check the URL for typos.")
    return Response(error_body(error), status_code=404, media_type="application/json")


def build_admin() -> Starlette:
    handlers: dict[int | type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {404: _not_found}
    return Starlette(routes=[Route("/healthz", _health)], exception_handlers=handlers)
