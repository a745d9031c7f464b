"""Header filtering both ways, and the trailer contract.

Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message, so a proxy never forwards
them: Connection and every header it names, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-*.
ASGI hands us lower-cased names as bytes; we keep them that way end to end.
"""

from __future__ import annotations

import re

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-authentication-info",
    }
)

# Never sent upstream: the client's own credentials (the proxy attaches the provider's), the Host (rewritten),
# the body framing (recomputed for the body we send), Accept-Encoding (we ask for identity so the
# sidecar meter reads plain bytes and content-length stays true to what the client gets), our own headers.
_REQUEST_DROP = frozenset(
    {
        b"host",
        b"authorization",
        b"x-api-key",
        b"api-key",
        b"x-goog-api-key",
        b"content-length",
        b"accept-encoding",
        b"cookie",
    }
)

# Never sent to the client: framing is the server's job; content-length is re-added by the caller only when
# the body passes through unchanged. Date and Server are the server's too (hypercorn adds its own to every
# response): passed on, the client got two of each, and a client that reads Date (botocore, for clock skew) got
# both in one comma-joined value.
_RESPONSE_DROP = frozenset({b"content-length", b"set-cookie", b"date", b"server"})

REQUEST_ID = b"x-teeproxy-request-id"
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")

TRAILER_FIELDS = (
    b"x-teeproxy-input-tokens",
    b"x-teeproxy-output-tokens",
    b"x-teeproxy-cached-tokens",
    b"x-teeproxy-cache-write-tokens",
    b"x-teeproxy-reasoning-tokens",
    b"x-teeproxy-cost-usd",
    b"x-teeproxy-usage",
)
TRAILER_DECLARATION = b", ".join(TRAILER_FIELDS)


def _connection_tokens(headers: Headers) -> set[bytes]:
    """Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1)."""
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return named


def _without_hop_by_hop(headers: Headers, drop: frozenset[bytes], prefixes: tuple[bytes, ...]) -> Headers:
    named = _connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if name not in HOP_BY_HOP and name not in drop and name not in named and not name.startswith(prefixes)
    ]


def upstream_request_headers(headers: Headers) -> Headers:
    return _without_hop_by_hop(headers, _REQUEST_DROP, (b"proxy-", b"x-teeproxy-"))


def client_response_headers(headers: Headers) -> Headers:
    """The upstream's own `x-teeproxy-*` headers are dropped: only the proxy speaks in that name."""
    return _without_hop_by_hop(headers, _RESPONSE_DROP, (b"proxy-", b"x-teeproxy-"))


def get(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def well_formed_request_id(value: bytes | None) -> bool:
    return value is not None and _REQUEST_ID_RE.match(value) is not None


def wants_trailers(headers: Headers, http_version: str) -> bool:
    """Does the client accept trailers on this response?

    HTTP/1.1: `TE` is a list, `trailers` may stand among other codings (RFC 9110 §10.1.4). HTTP/2: hypercorn
    only sends trailers when the header is exactly `te: trailers` (the only TE value h2 allows). HTTP/1.0 has
    no chunked encoding and so no trailers.
    """
    if http_version == "1.0":
        return False
    for name, value in headers:
        if name != b"te":
            continue
        if http_version == "1.1":
            if any(token.split(b";")[0].strip().lower() == b"trailers" for token in value.split(b",")):
                return True
        elif value.strip().lower() == b"trailers":
            return True
    return False
