"""The upstream connection pool: httpcore's connections, handed out in O(1) per request.

httpcore 1.0's `AsyncConnectionPool` re-examines every connection and every queued request whenever a request
starts and whenever a response closes. With one HTTP/1.1 connection per in-flight stream that is O(streams)
work twice per stream: at 1,000 open streams it was 70 % of the proxy's CPU (py-spy, `bench` paced1000), and
at 10,000 it starved the workers. This pool keeps the same connection objects, the same limits and the same
keep-alive rules, but tracks idle connections per origin in a deque, so that a request takes the most
recently used idle connection (least likely to have been closed by the server) and a closing response puts
its connection back, each in constant time.

HTTP/1.1 only (`http2=False`): one request per connection at a time, which is what lets a connection be
either idle in the deque or owned by exactly one response. The proxy runs on asyncio, so waiting for a free
slot is an asyncio future; the connections themselves still do their I/O through httpcore's backend.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpcore
from httpcore._exceptions import ConnectionNotAvailable
from httpcore._models import Origin
from httpcore._synchronization import AsyncShieldCancellation

# Idle connections older than this are checked and closed a few at a time as connections come back, so that
# a pool that shrinks after a burst does not keep thousands of sockets to the provider open.
_EXPIRED_CHECKS_PER_RELEASE = 2


class UpstreamPool(httpcore.AsyncConnectionPool):
    """A drop-in for httpcore's pool (same constructor), for an `httpx.AsyncHTTPTransport`'s `_pool`."""

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("http2"):
            raise ValueError("UpstreamPool serves HTTP/1.1 upstreams only")
        super().__init__(**kwargs)
        self._owned: set[httpcore.AsyncConnectionInterface] = set()  # every open connection, idle or busy
        self._idle: dict[tuple[bytes, bytes, int], collections.deque[httpcore.AsyncConnectionInterface]] = {}
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def connections(self) -> list[httpcore.AsyncConnectionInterface]:
        return list(self._owned)

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        scheme = request.url.scheme
        if scheme not in (b"http", b"https"):
            raise httpcore.UnsupportedProtocol(f"Request URL has an unsupported protocol '{scheme.decode()}://'.")
        timeout = request.extensions.get("timeout", {}).get("pool")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            origin = request.url.origin
            connection = await self._acquire(origin, deadline)
            try:
                response = await connection.handle_async_request(request)
            except ConnectionNotAvailable:
                await self._release(connection, origin)  # it changed state under us (httpcore's case too)
                continue
            except BaseException:
                await self._release(connection, origin)
                raise
            return httpcore.Response(
                status=response.status,
                headers=response.headers,
                content=_PooledStream(response.stream, self, connection, origin),
                extensions=response.extensions,
            )

    async def _acquire(self, origin: Origin, deadline: float | None) -> httpcore.AsyncConnectionInterface:
        while True:
            idle = self._idle.get(_key(origin))
            while idle:
                connection = idle.pop()
                if connection.is_closed():
                    self._owned.discard(connection)
                elif connection.has_expired():  # keep-alive ran out, or the server closed it while idle
                    await self._discard(connection)
                else:
                    return connection
            if len(self._owned) >= self._max_connections:
                await self._close_one_idle()  # another origin's idle connection makes room, if there is one
            if len(self._owned) < self._max_connections:
                connection = self.create_connection(origin)
                self._owned.add(connection)
                return connection
            await self._wait_for_room(deadline)

    async def _wait_for_room(self, deadline: float | None) -> None:
        """Queue until a connection is discarded or comes back idle (FIFO; a woken request then competes with
        new arrivals for the room, which keeps this O(1) and is fair enough at a pool limit that is a safety
        bound, not a working point)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        woken = False
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.wait_for(waiter, remaining)
            woken = True
        except TimeoutError:
            raise httpcore.PoolTimeout("timed out waiting for a connection from the pool") from None
        finally:
            if not woken:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next_if_room()  # woken, but leaving (cancelled): pass the room on
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)

    def _wake_next_if_room(self) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    async def _release(self, connection: httpcore.AsyncConnectionInterface, origin: Origin) -> None:
        """A response is closed (or a request failed): keep the connection if it can serve another request."""
        if connection.is_idle() and not connection.is_closed() and not _holds_unread_bytes(connection):
            idle = self._idle.setdefault(_key(origin), collections.deque())
            if len(idle) < self._max_keepalive_connections:
                idle.append(connection)
                # Each check awaits a close, during which other requests take connections from this deque: look
                # again every time rather than count on a length read before the first await.
                for _ in range(_EXPIRED_CHECKS_PER_RELEASE):
                    if len(idle) < 2:
                        break
                    oldest = idle[0]
                    if not (oldest.is_closed() or oldest.has_expired()):
                        break
                    idle.popleft()
                    await self._discard(oldest)
                self._wake_next_if_room()
                return
        await self._discard(connection)

    async def _discard(self, connection: httpcore.AsyncConnectionInterface) -> None:
        self._owned.discard(connection)
        self._wake_next_if_room()
        with AsyncShieldCancellation():
            await connection.aclose()

    async def _close_one_idle(self) -> None:
        for idle in self._idle.values():
            if idle:
                await self._discard(idle.popleft())
                return

    async def aclose(self) -> None:
        owned, self._owned, self._idle = self._owned, set(), {}
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
        with AsyncShieldCancellation():
            for connection in owned:
                await connection.aclose()

    def __repr__(self) -> str:
        idle = sum(len(d) for d in self._idle.values())
        return f"<{type(self).__name__} [{len(self._owned) - idle} busy, {idle} idle, {len(self._waiters)} waiting]>"


def _key(origin: Origin) -> tuple[bytes, bytes, int]:
    return origin.scheme, origin.host, origin.port  # httpcore's Origin compares by value but is not hashable


class _PooledStream:
    """The response body; closing it gives the connection back to the pool, exactly once."""

    def __init__(
        self, stream: Any, pool: UpstreamPool, connection: httpcore.AsyncConnectionInterface, origin: Origin
    ) -> None:
        self._stream, self._pool, self._connection, self._origin = stream, pool, connection, origin
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with AsyncShieldCancellation():
            if hasattr(self._stream, "aclose"):
                await self._stream.aclose()
            await self._pool._release(self._connection, self._origin)


def _holds_unread_bytes(connection: httpcore.AsyncConnectionInterface) -> bool:
    """An HTTP/1.1 connection whose upstream sent more than the response (bytes past its Content-Length, a second
    unasked-for response): httpcore keeps them in its h11 buffer, so the socket looks clean and the next request
    on it would read them as its own response, another client's. Such a connection is never reused. (httpcore
    1.0's internals, as elsewhere in this module: `AsyncHTTPConnection._connection._h11_state`.)"""
    inner = getattr(connection, "_connection", None)
    state = getattr(inner, "_h11_state", None)
    if state is None:
        return False
    data, closed = state.trailing_data
    return bool(data) or bool(closed)
