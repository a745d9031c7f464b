"""The one long-lived httpx client, and the one place httpx errors become ProxyErrors.

One `httpx.AsyncClient` serves every provider: pooled, keep-alive, no redirects (a redirect from a provider
is forwarded as is, never followed to a host the config did not name), no environment proxies, no
automatic decompression on the relay path (`aiter_raw`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from proxy.config import ProviderConfig
from proxy.errors import ProxyError, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.headers import Headers

MAX_CONNECTIONS = 1000
KEEPALIVE_EXPIRY_S = 60.0


def make_client() -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    return httpx.AsyncClient(limits=limits, timeout=None, follow_redirects=False, trust_env=False)


def timeout_for(provider: ProviderConfig) -> httpx.Timeout:
    # `read` bounds the gap between two reads, not the whole stream: a long generation is fine, a stalled
    # one is cut.
    return httpx.Timeout(
        connect=provider.connect_timeout_s, read=provider.read_timeout_s, write=provider.read_timeout_s, pool=30.0
    )


def map_error(exc: httpx.HTTPError) -> ProxyError:
    """Most specific first. Messages name the kind of failure, never a URL with credentials or a key."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return UpstreamTimeout("timed out connecting to the upstream provider")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout("the upstream provider stopped sending within the read timeout")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError("could not connect to the upstream provider")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return UpstreamProtocolError("the upstream provider closed the connection or broke the protocol")
    return UpstreamProtocolError(f"upstream request failed ({type(exc).__name__})")


async def open_stream(
    client: httpx.AsyncClient, method: str, url: str, headers: Headers, body: bytes, provider: ProviderConfig
) -> httpx.Response:
    """Send the request and return the response with its body not yet read."""
    request = client.build_request(method, url, headers=headers, content=body, timeout=timeout_for(provider))
    try:
        return await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise map_error(exc) from None


async def iter_raw(response: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body, one item per network read, untouched; httpx errors mapped."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        raise map_error(exc) from None


async def close(response: httpx.Response) -> None:
    with contextlib.suppress(httpx.HTTPError):
        await response.aclose()
