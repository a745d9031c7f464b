"""Requests to providers: the one long-lived client, a response whose body is read as it arrives.

The hot path is an asyncio Protocol with sans-I/O heads and bodies (`proxy.upstream_conn`) over an O(1) pool
(`proxy.upstream_pool`): no redirects (a provider's redirect is forwarded as is, never followed to a host the
config did not name), no environment proxies, no decompression (the relay forwards the bytes as sent, and
asks for `identity`).

httpx keeps one job here, where it earns its place: turning a URL string into the origin and the request
target exactly as it always has (percent-encoding, dot segments, IDNA), so that what Bedrock's SigV4
signature covers is what goes on the wire. Its result is cached per URL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from proxy.config import ProviderConfig
from proxy.errors import UpstreamConnectError
from proxy.providers.base import Outgoing
from proxy.upstream_conn import StaleConnection, UpstreamConnection
from proxy.upstream_pool import Origin, UpstreamPool

# One upstream connection per in-flight stream (HTTP/1.1): the pool must be as large as the concurrency a worker
# serves, or streams queue inside the proxy with no byte sent. The process's fd limit is the real bound.
MAX_CONNECTIONS = 16384
KEEPALIVE_EXPIRY_S = 60.0
POOL_TIMEOUT_S = 30.0
# Distinct upstream URLs remembered (they repeat: a base URL and a path per endpoint and model).
_URL_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class _Target:
    origin: Origin
    host: bytes  # the Host header: the authority, without a default port
    path: bytes  # the request target: path and query


class UpstreamClient:
    def __init__(self, pool: UpstreamPool | None = None) -> None:
        self.pool = pool or UpstreamPool(MAX_CONNECTIONS, KEEPALIVE_EXPIRY_S)
        self.pool_timeout = POOL_TIMEOUT_S
        self._targets: dict[str, _Target] = {}

    def target(self, url: str) -> _Target:
        found = self._targets.get(url)
        if found is None:
            parsed = httpx.URL(url)
            scheme = parsed.scheme
            if scheme not in ("http", "https") or not parsed.host:
                raise UpstreamConnectError("the provider's base_url is not an http(s) URL")
            port = parsed.port or (443 if scheme == "https" else 80)
            found = _Target((scheme, parsed.host, port), parsed.netloc, parsed.raw_path)
            if len(self._targets) >= _URL_CACHE_SIZE:
                self._targets.clear()
            self._targets[url] = found
        return found

    async def aclose(self) -> None:
        self.pool.close()


def make_client() -> UpstreamClient:
    return UpstreamClient()


class UpstreamResponse:
    """Status and headers (names lowercased); `read()` gives the body one socket read at a time, b"" at its end;
    `close()` gives the connection back to the pool, or closes it when the body was not read to its end."""

    __slots__ = ("status_code", "headers", "read", "unread", "_connection", "_pool")

    def __init__(
        self, status_code: int, headers: list[tuple[bytes, bytes]], connection: UpstreamConnection, pool: UpstreamPool
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.read = connection.read
        self.unread = connection.unread
        self._connection: UpstreamConnection | None = connection
        self._pool = pool

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def tee_into(self, consumer: Callable[[bytes], bool] | None) -> None:
        """Let `consumer` take body chunks as they are read, in the connection's callback, while `read()` waits
        with nothing queued; it returns False for a chunk it cannot take now, which `read()` then returns. What
        it raises, `read()` raises. None stops it."""
        if self._connection is not None:
            self._connection.consumer = consumer

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.consumer = None
            self._pool.release(connection)


async def open_stream(client: UpstreamClient, outgoing: Outgoing, provider: ProviderConfig) -> UpstreamResponse:
    """Send the request and return the response with its body not yet read.

    A kept-alive connection that the provider closed just as it was reused (before any byte of a response) is
    retried once on a new connection; any other failure is raised as the `UpstreamError` it is.
    """
    target = client.target(outgoing.url)
    headers = [(b"host", target.host), *outgoing.headers, (b"content-length", str(len(outgoing.body)).encode())]
    method = outgoing.method.encode()
    pool = client.pool
    for attempt in range(2):
        connection = await pool.acquire(target.origin, provider.connect_timeout_s, client.pool_timeout)
        try:
            status, response_headers = await connection.send_request(
                method, target.path, headers, outgoing.body, provider.read_timeout_s
            )
        except StaleConnection:
            pool.discard(connection)
            if attempt:
                raise
            continue
        except BaseException:
            pool.discard(connection)
            raise
        return UpstreamResponse(status, response_headers, connection, pool)
    raise AssertionError("unreachable")
