"""CORS for browser apps calling the proxy directly (`[server] cors_origins`, off by default).

A browser sends a preflight `OPTIONS` (no credentials) before a cross-origin POST with an `Authorization` or
`x-api-key` header; it must be answered before the key check, or every browser call fails. Only origins listed
in the config are answered (`"*"` allows any, for a local tool); the response echoes the origin, allows the
methods the API uses and the request headers the browser asked for, and exposes the `x-teeproxy-*` headers so a
page can read the request id and the provider that served. Everything else is left as it is.
"""

from __future__ import annotations

from proxy.asgi_types import Message, Scope, Send

_ALLOW_METHODS = b"GET, POST, OPTIONS"
_EXPOSE = b"x-teeproxy-request-id, x-teeproxy-provider, x-teeproxy-model, x-teeproxy-attempts, x-teeproxy-reason"
MAX_AGE_S = 600


def allowed_origin(scope: Scope, origins: list[str]) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"origin":
            if "*" in origins or value.decode("latin-1") in origins:
                return bytes(value)
            return None
    return None


async def preflight(scope: Scope, send: Send, origin: bytes) -> None:
    requested = b""
    for name, value in scope["headers"]:
        if name == b"access-control-request-headers":
            requested = bytes(value)
    headers = [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-methods", _ALLOW_METHODS),
        (b"access-control-max-age", str(MAX_AGE_S).encode()),
        (b"vary", b"origin"),
        (b"content-length", b"0"),
    ]
    if requested:
        headers.append((b"access-control-allow-headers", requested))
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def with_cors(send: Send, origin: bytes) -> Send:
    """`send`, adding the CORS response headers to the response head."""

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {
                **message,
                "headers": [
                    *message.get("headers", []),
                    (b"access-control-allow-origin", origin),
                    (b"access-control-expose-headers", _EXPOSE),
                    (b"vary", b"origin"),
                ],
            }
        await send(message)

    return cors_send
