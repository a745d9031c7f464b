"""The upstream connection pool: HTTP/1.1 connections to providers, handed out and taken back in O(1).

One connection serves one request at a time, so a connection is either idle in its origin's deque or owned by
exactly one response. A request takes the most recently used idle connection (the least likely to have been
closed by the server); a finished response gives its connection back, or closes it when it cannot serve
again (see `UpstreamConnection.reusable`). What the pool guarantees:

* **Limits.** At most `max_connections` open or opening at once, over all origins; an idle connection of
  another origin is closed to make room before a request waits.
* **FIFO waiters and a pool timeout.** At the limit, requests queue in arrival order; a woken request then
  competes with new arrivals for the room, which keeps this O(1) and is fair enough at a limit that is a
  safety bound, not a working point.
* **Keep-alive expiry.** An idle connection older than `keepalive_expiry` is closed instead of reused; a few
  of the oldest are checked each time a connection comes back, so a pool that shrinks after a burst does
  not keep thousands of sockets to the provider open. A connection the server closed while idle is
  forgotten at once.
* **TLS with certificate checks** (the system's defaults with certifi's roots, like httpx; ALPN http/1.1).

Everything but connecting is synchronous: taking back or closing a connection never awaits, so nothing can
change under a release half-done.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl

import certifi

from proxy.errors import UpstreamConnectError, UpstreamTimeout
from proxy.upstream_conn import UpstreamConnection

Origin = tuple[str, str, int]  # scheme, host, port

_EXPIRED_CHECKS_PER_RELEASE = 2


def default_ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


class UpstreamPool:
    def __init__(
        self, max_connections: int, keepalive_expiry: float, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._owned: set[UpstreamConnection] = set()  # every open connection, idle or busy
        self._connecting = 0
        self._idle: dict[Origin, collections.deque[UpstreamConnection]] = {}
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def connections(self) -> list[UpstreamConnection]:
        return list(self._owned)

    async def acquire(
        self, origin: Origin, connect_timeout: float | None, pool_timeout: float | None
    ) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        deadline = None if pool_timeout is None else loop.time() + pool_timeout
        while True:
            idle = self._idle.get(origin)
            if idle:
                now = loop.time()
                while idle:
                    connection = idle.pop()
                    if connection.closed:
                        continue  # the server closed it while idle (already forgotten)
                    if now - connection.idle_since > self._keepalive_expiry:
                        self.discard(connection)
                        continue
                    return connection
            if self._in_use_or_opening() >= self._max_connections:
                self._close_one_idle()
            if self._in_use_or_opening() < self._max_connections:
                return await self._connect(loop, origin, connect_timeout)
            await self._wait_for_room(loop, deadline)

    def _in_use_or_opening(self) -> int:
        return len(self._owned) + self._connecting

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, origin: Origin, connect_timeout: float | None
    ) -> UpstreamConnection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = default_ssl_context()
            tls = self._ssl_context
        self._connecting += 1
        connection: UpstreamConnection | None = None
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: UpstreamConnection(loop, origin),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("timed out connecting to the upstream provider") from None
        except ssl.SSLCertVerificationError:
            raise UpstreamConnectError("the upstream provider's TLS certificate did not verify") from None
        except (OSError, ssl.SSLError):
            raise UpstreamConnectError("could not connect to the upstream provider") from None
        finally:
            self._connecting -= 1
            if connection is None:
                self._wake_next()  # a failed connect frees its room
        self._owned.add(connection)
        connection.on_lost = self._forget
        return connection

    async def _wait_for_room(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        waiter = loop.create_future()
        self._waiters.append(waiter)
        woken = False
        try:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait_for(waiter, remaining)
            woken = True
        except TimeoutError:
            raise UpstreamTimeout("timed out waiting for a connection to the upstream provider") from None
        finally:
            if not woken:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # woken, but leaving (cancelled): pass the room on
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def release(self, connection: UpstreamConnection) -> None:
        """The response is done with its connection: keep it for the next request if it can serve one."""
        if connection not in self._owned or not connection.reusable:
            self.discard(connection)
            return
        connection.recycle()
        now = connection.idle_since = asyncio.get_running_loop().time()
        idle = self._idle.get(connection.key)
        if idle is None:
            idle = self._idle[connection.key] = collections.deque()
        idle.append(connection)
        for _ in range(_EXPIRED_CHECKS_PER_RELEASE):
            oldest = idle[0]
            if oldest is connection or not (oldest.closed or now - oldest.idle_since > self._keepalive_expiry):
                break
            idle.popleft()
            self.discard(oldest)
        self._wake_next()

    def discard(self, connection: UpstreamConnection) -> None:
        """Close a connection that will not serve again (a response cut short, a failed request)."""
        connection.close()
        self._forget(connection)

    def _forget(self, connection: UpstreamConnection) -> None:
        if connection in self._owned:
            self._owned.discard(connection)
            self._wake_next()

    def _close_one_idle(self) -> None:
        for idle in self._idle.values():
            while idle:
                connection = idle.popleft()
                if not connection.closed:
                    self.discard(connection)
                    return

    def close(self) -> None:
        owned, self._owned, self._idle = self._owned, set(), {}
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
        for connection in owned:
            connection.close()

    def __repr__(self) -> str:
        idle = sum(len(d) for d in self._idle.values())
        return f"<{type(self).__name__} [{len(self._owned)} open, {idle} idle, {len(self._waiters)} waiting]>"
