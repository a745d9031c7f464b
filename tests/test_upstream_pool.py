"""The upstream pool as the provider sees it: how many connections it opens, reuses, holds and gives up.

A real keep-alive HTTP/1.1 server on 127.0.0.1 counts the connections it accepts; the client is httpx over
`UpstreamPool`, as in the proxy. Each test runs its own event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from proxy.demo import H11Server, Reply, Request
from proxy.upstream import _Backend
from proxy.upstream_pool import UpstreamPool


class CountingServer(H11Server):
    """Answers every request with `ok`; `/hold` waits until `release` is set. Counts accepted connections."""

    def __init__(self) -> None:
        super().__init__(self._reply)
        self.accepted = 0
        self.release = asyncio.Event()
        self.held = 0
        self._changed = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            await super()._serve(reader, writer)
        finally:
            self._changed.set()

    async def _reply(self, request: Request, reply: Reply) -> None:
        if request.path == "/hold":
            self.held += 1
            self._changed.set()
            await self.release.wait()
        await reply.start(200, [(b"content-length", b"2")])
        await reply.write(b"ok")
        await reply.end()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds, re-checking whenever a request is held or a connection ends."""
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    def close_idle_connections(self) -> None:
        for writer in list(self._connections):
            writer.close()


def client_over(pool: UpstreamPool) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport()
    transport._pool = pool
    return httpx.AsyncClient(transport=transport)


def make_pool(max_connections: int = 100, keepalive_expiry: float = 60.0) -> UpstreamPool:
    return UpstreamPool(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_expiry,
        network_backend=_Backend(),
    )


def run(test: Callable[[CountingServer, str], Awaitable[None]]) -> None:
    async def main() -> None:
        server = CountingServer()
        await server.start()
        try:
            await asyncio.wait_for(test(server, f"http://127.0.0.1:{server.port}"), 20)
        finally:
            server.release.set()
            await server.aclose()

    asyncio.run(main())


def test_sequential_requests_share_one_connection() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool()) as client:
            for _ in range(5):
                assert (await client.get(url + "/")).text == "ok"
        assert server.accepted == 1

    run(test)


def test_concurrent_streams_get_a_connection_each_then_reuse_them() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool()) as client:
            async with asyncio.TaskGroup() as group:
                first = [group.create_task(client.get(url + "/hold")) for _ in range(20)]
                await server.until(lambda: server.held == 20)  # all 20 at the server at once: none queued in the pool
                server.release.set()
            assert [r.result().text for r in first] == ["ok"] * 20
            again = await asyncio.gather(*(client.get(url + "/") for _ in range(20)))
            assert [r.text for r in again] == ["ok"] * 20
        assert server.accepted == 20

    run(test)


def test_at_the_limit_a_request_waits_for_a_connection_to_come_back() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool(max_connections=2)) as client, asyncio.TaskGroup() as group:
            for _ in range(2):
                group.create_task(client.get(url + "/hold"))
            await server.until(lambda: server.held == 2)
            third = group.create_task(client.get(url + "/"))
            await asyncio.sleep(0.1)
            assert not third.done() and server.accepted == 2
            server.release.set()
            assert (await third).text == "ok"
        assert server.accepted == 2

    run(test)


def test_at_the_limit_the_pool_timeout_holds() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool(max_connections=1)) as client:
            async with asyncio.TaskGroup() as group:
                group.create_task(client.get(url + "/hold"))
                await server.until(lambda: server.held == 1)
                with pytest.raises(httpx.PoolTimeout):
                    await client.get(url + "/", timeout=httpx.Timeout(5.0, pool=0.1))
                server.release.set()
            assert (await client.get(url + "/")).text == "ok"  # the timed-out waiter left nothing behind

    run(test)


def test_a_cancelled_request_gives_its_connection_back() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool(max_connections=1)) as client, asyncio.TaskGroup() as group:
            held = group.create_task(client.get(url + "/hold"))
            await server.until(lambda: server.held == 1)
            waiting = group.create_task(client.get(url + "/"))
            await asyncio.sleep(0.05)
            held.cancel()  # a client that went away mid-request
            assert (await waiting).text == "ok"

    run(test)


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool()) as client:
            assert (await client.get(url + "/")).text == "ok"
            server.close_idle_connections()
            await asyncio.sleep(0.05)
            assert (await client.get(url + "/")).text == "ok"
        assert server.accepted == 2

    run(test)


def test_an_idle_connection_past_keepalive_expiry_is_replaced() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool(keepalive_expiry=0.05)) as client:
            assert (await client.get(url + "/")).text == "ok"
            await asyncio.sleep(0.1)
            assert (await client.get(url + "/")).text == "ok"
        assert server.accepted == 2

    run(test)


def test_closing_the_pool_closes_its_connections() -> None:
    async def test(server: CountingServer, url: str) -> None:
        pool = make_pool()
        async with client_over(pool) as client:
            await asyncio.gather(*(client.get(url + "/") for _ in range(3)))
            assert len(pool.connections) == 3
        assert pool.connections == []
        await server.until(lambda: not server._connections)  # the server saw every connection end

    run(test)


def test_a_connection_with_bytes_past_the_response_is_never_reused() -> None:
    """An upstream that writes a second, unasked-for response after the first one's Content-Length: the next
    request (another client's) must get its own answer, on a new connection, never those bytes."""

    async def main() -> None:
        accepted = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            n = accepted
            writers.append(writer)
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    body = f"answer on connection {n}".encode()
                    smuggled = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nSMUGGLED"
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s%s" % (len(body), body, smuggled))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        writers: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        try:
            async with client_over(make_pool()) as client:
                first = (await client.get(url)).text
                await asyncio.sleep(0.1)
                second = (await client.get(url)).text
        finally:
            server.close()
            for writer in writers:
                writer.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)
        assert (first, second) == ("answer on connection 1", "answer on connection 2")

    asyncio.run(main())


def test_releasing_while_others_take_idle_connections_does_not_fail() -> None:
    """`_release` awaits closes of expired idle connections; meanwhile other requests take from the same deque."""
    import collections

    from httpcore._models import Origin

    class Fake:
        def __init__(self, expired: bool = False) -> None:
            self.expired, self.closed = expired, False

        def is_idle(self) -> bool:
            return True

        def is_closed(self) -> bool:
            return self.closed

        def has_expired(self) -> bool:
            return self.expired

        async def aclose(self) -> None:
            self.closed = True
            await asyncio.sleep(0)

    async def main() -> None:
        pool, origin = make_pool(), Origin(b"http", b"127.0.0.1", 9)
        idle = collections.deque([Fake(expired=True), Fake(), Fake()])
        pool._idle[(origin.scheme, origin.host, origin.port)] = idle  # type: ignore[assignment]
        pool._owned.update(idle)  # type: ignore[arg-type]
        back = Fake()
        pool._owned.add(back)  # type: ignore[arg-type]
        async with asyncio.TaskGroup() as group:
            group.create_task(pool._release(back, origin))  # type: ignore[arg-type]
            for _ in range(3):
                group.create_task(pool._acquire(origin, None))

    asyncio.run(main())
