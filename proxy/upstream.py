"""The one long-lived httpx client, and the one place httpx errors become ProxyErrors.

One `httpx.AsyncClient` serves every provider: pooled, keep-alive, no redirects (a redirect from a provider
is forwarded as is, never followed to a host the config did not name), no environment proxies, no
automatic decompression on the relay path (`aiter_raw`).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio.abc
import httpcore
import httpx
from httpcore._backends.anyio import AnyIOBackend, AnyIOStream
from httpcore._utils import is_socket_readable

from proxy.config import ProviderConfig
from proxy.errors import ProxyError, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.providers.base import Outgoing
from proxy.upstream_pool import UpstreamPool

# One upstream connection per in-flight stream (HTTP/1.1): the pool must be as large as the concurrency a worker
# serves, or streams queue inside the proxy with no byte sent. The process's fd limit is the real bound.
MAX_CONNECTIONS = 16384
KEEPALIVE_EXPIRY_S = 60.0


class _Stream(AnyIOStream):
    """anyio's stream with the raw socket looked up once.

    httpcore checks every idle pooled connection for readability each time it assigns a request to a
    connection; anyio answers `get_extra_info("socket")` by rebuilding a dict of socket attributes (with a
    getpeername() syscall) on every call. Profiling the proxy at 50 concurrent streams put 40 % of its CPU
    there. Caching the socket makes the check one poll() per idle connection, as httpcore intends.
    """

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        super().__init__(stream)
        self._sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._sock is not None and is_socket_readable(self._sock)
        if info == "socket":
            return self._sock
        return super().get_extra_info(info)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        tls = await super().start_tls(ssl_context, server_hostname, timeout)
        assert isinstance(tls, AnyIOStream)
        return _Stream(tls._stream)


class _Backend(AnyIOBackend):
    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        stream = await super().connect_tcp(*args, **kwargs)
        assert isinstance(stream, AnyIOStream)
        return _Stream(stream._stream)


def make_client() -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    # The pool httpx would build, with O(1) connection hand-out (`upstream_pool.py`) and the cached socket above
    # (httpcore internals, pinned in pyproject).
    transport._pool = UpstreamPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
        http1=True,
        http2=False,
        network_backend=_Backend(),
    )
    return httpx.AsyncClient(transport=transport, timeout=None, follow_redirects=False, trust_env=False)


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


async def open_stream(client: httpx.AsyncClient, outgoing: Outgoing, provider: ProviderConfig) -> httpx.Response:
    """Send the request and return the response with its body not yet read."""
    request = client.build_request(
        outgoing.method, outgoing.url, headers=outgoing.headers, content=outgoing.body, timeout=timeout_for(provider)
    )
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
