"""The upstream pool as the provider sees it: how many connections it opens, reuses, holds and gives up.

A real keep-alive HTTP/1.1 server on 127.0.0.1 counts the connections it accepts; the client is the proxy's
own (`proxy.upstream.open_stream` over `UpstreamPool`). Each test runs its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme

from proxy.config import ProviderConfig
from proxy.demo import H11Server, Reply, Request
from proxy.errors import UpstreamConnectError, UpstreamTimeout
from proxy.providers.base import Outgoing
from proxy.upstream import UpstreamClient, open_stream
from proxy.upstream_conn import HIGH_WATER, UpstreamConnection
from proxy.upstream_pool import UpstreamPool, default_ssl_context


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


@contextlib.asynccontextmanager
async def raw_server(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """A scripted upstream on 127.0.0.1 (yields its URL); every connection it holds is closed on the way out."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
        await asyncio.sleep(0.01)


PROVIDER = ProviderConfig(name="test", base_url="http://127.0.0.1")


class Client(UpstreamClient):
    """`get(url)` → the body as text, read to its end (the connection goes back to the pool)."""

    async def get(self, url: str, pool_timeout: float | None = None) -> str:
        if pool_timeout is not None:
            self.pool_timeout = pool_timeout
        response = await open_stream(self, Outgoing("POST", url, [], b"{}"), PROVIDER)
        parts = []
        try:
            while chunk := await response.read():
                parts.append(chunk)
        finally:
            response.close()
        return b"".join(parts).decode()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def client_over(pool: UpstreamPool) -> Client:
    return Client(pool)


def make_pool(max_connections: int = 100, keepalive_expiry: float = 60.0) -> UpstreamPool:
    return UpstreamPool(max_connections=max_connections, keepalive_expiry=keepalive_expiry)


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
                assert (await client.get(url + "/")) == "ok"
        assert server.accepted == 1

    run(test)


def test_concurrent_streams_get_a_connection_each_then_reuse_them() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool()) as client:
            async with asyncio.TaskGroup() as group:
                first = [group.create_task(client.get(url + "/hold")) for _ in range(20)]
                await server.until(lambda: server.held == 20)  # all 20 at the server at once: none queued in the pool
                server.release.set()
            assert [r.result() for r in first] == ["ok"] * 20
            again = await asyncio.gather(*(client.get(url + "/") for _ in range(20)))
            assert list(again) == ["ok"] * 20
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
            assert (await third) == "ok"
        assert server.accepted == 2

    run(test)


def test_at_the_limit_the_pool_timeout_holds() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool(max_connections=1)) as client:
            async with asyncio.TaskGroup() as group:
                group.create_task(client.get(url + "/hold"))
                await server.until(lambda: server.held == 1)
                with pytest.raises(UpstreamTimeout):
                    await client.get(url + "/", pool_timeout=0.1)
                server.release.set()
            assert (await client.get(url + "/")) == "ok"  # the timed-out waiter left nothing behind

    run(test)


def test_a_cancelled_request_gives_its_connection_back() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool(max_connections=1)) as client, asyncio.TaskGroup() as group:
            held = group.create_task(client.get(url + "/hold"))
            await server.until(lambda: server.held == 1)
            waiting = group.create_task(client.get(url + "/"))
            await asyncio.sleep(0.05)
            held.cancel()  # a client that went away mid-request
            assert (await waiting) == "ok"

    run(test)


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool()) as client:
            assert (await client.get(url + "/")) == "ok"
            server.close_idle_connections()
            await asyncio.sleep(0.05)
            assert (await client.get(url + "/")) == "ok"
        assert server.accepted == 2

    run(test)


def test_an_idle_connection_past_keepalive_expiry_is_replaced() -> None:
    async def test(server: CountingServer, url: str) -> None:
        async with client_over(make_pool(keepalive_expiry=0.05)) as client:
            assert (await client.get(url + "/")) == "ok"
            await asyncio.sleep(0.1)
            assert (await client.get(url + "/")) == "ok"
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
                first = await client.get(url)
                await asyncio.sleep(0.1)
                second = await client.get(url)
        finally:
            server.close()
            for writer in writers:
                writer.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)
        assert (first, second) == ("answer on connection 1", "answer on connection 2")

    asyncio.run(main())


def test_a_kept_alive_connection_closed_as_it_is_reused_is_retried_once_on_a_new_one() -> None:
    """The provider closes an idle connection just as a request goes out on it (no byte of a response): the
    request is sent again on a new connection instead of failing the client."""
    accepted = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.readuntil(b"{}")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"{}")  # the second request on this connection: closed without an answer

    async def main() -> None:
        async with raw_server(serve) as url, client_over(make_pool()) as client:
            assert await client.get(url) == "ok"
            assert await client.get(url) == "ok"
        assert accepted == 2

    asyncio.run(main())


def test_one_read_of_many_chunks_is_one_piece_of_body() -> None:
    """A read that holds a hundred HTTP chunks reaches the relay as one piece, byte for byte: one ASGI message
    and one send() to the client instead of a hundred."""
    frames = [b'data: {"n": %d}\n\n' % i for i in range(100)]
    wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(frame), frame) for frame in frames
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"{}")
        writer.write(wire)  # the head and every chunk in one write
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def main() -> list[bytes]:
        async with raw_server(serve) as url, client_over(make_pool()) as client:
            response = await open_stream(client, Outgoing("POST", url, [], b"{}"), PROVIDER)
            pieces = []
            while chunk := await response.read():
                pieces.append(chunk)
            response.close()
            return pieces

    assert asyncio.run(main()) == [b"".join(frames)]


def chunked_server_of(parts: list[bytes]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A provider that sends each part as an HTTP chunk of its own, 50 ms apart (a socket read each)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"{}")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in parts:
            await asyncio.sleep(0.05)
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await reader.read()

    return serve


def test_a_consumer_takes_reads_while_the_reader_waits_and_what_it_declines_reaches_read_in_order() -> None:
    """The relay's callback path: while `read()` waits, each read goes to the consumer; one it cannot take now
    is what `read()` returns, and nothing overtakes it."""
    parts = [b"a", b"b", b"c", b"d"]
    seen: list[tuple[str, bytes]] = []

    def consumer(chunk: bytes) -> bool:
        if chunk == b"c":
            return False
        seen.append(("consumer", chunk))
        return True

    async def main() -> None:
        async with raw_server(chunked_server_of(parts)) as url, client_over(make_pool()) as client:
            response = await open_stream(client, Outgoing("POST", url, [], b"{}"), PROVIDER)
            response.tee_into(consumer)
            while chunk := await response.read():
                seen.append(("read", chunk))
            response.close()

    asyncio.run(main())
    assert seen == [("consumer", b"a"), ("consumer", b"b"), ("read", b"c"), ("consumer", b"d")]


def test_a_read_the_consumer_declined_is_not_overtaken_by_the_next() -> None:
    """Two reads arrive before the relay's task runs: the first declined (queued, the task woken), the second
    must queue behind it, not go to the consumer ahead of it. (The reads are handed to the connection by hand,
    on a real socket pair, so that both land in one turn of the loop.)"""

    async def main() -> tuple[bytes, list[bytes]]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        connection = UpstreamConnection(loop, ("http", "127.0.0.1", 80))
        await loop.connect_accepted_socket(lambda: connection, ours)
        taken: list[bytes] = []
        declining = True

        def consumer(chunk: bytes) -> bool:
            if declining:
                return False
            taken.append(chunk)
            return True

        try:
            async with asyncio.TaskGroup() as tasks:
                head = tasks.create_task(connection.send_request(b"POST", b"/", [(b"host", b"x")], b"{}", None))
                await asyncio.sleep(0)
                connection.data_received(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                assert (await head)[0] == 200
                connection.consumer = consumer
                reader = tasks.create_task(connection.read())
                await asyncio.sleep(0)  # the reader waits
                connection.data_received(b"1\r\na\r\n")
                declining = False
                connection.data_received(b"1\r\nb\r\n")
            return reader.result(), taken
        finally:
            connection.close()
            theirs.close()

    assert asyncio.run(main()) == (b"ab", [])


def test_what_a_consumer_raises_read_raises() -> None:
    def consumer(chunk: bytes) -> bool:
        if chunk == b"b":
            raise ValueError("the meter broke")
        return True

    async def main() -> None:
        async with raw_server(chunked_server_of([b"a", b"b", b"c"])) as url, client_over(make_pool()) as client:
            response = await open_stream(client, Outgoing("POST", url, [], b"{}"), PROVIDER)
            response.tee_into(consumer)
            try:
                with pytest.raises(ValueError, match="the meter broke"):
                    await response.read()
            finally:
                response.close()

    asyncio.run(main())


@pytest.mark.parametrize("stall", ["before the head", "after the first chunk"])
def test_a_silent_upstream_is_cut_at_the_read_timeout(stall: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"{}")
        if stall == "after the first chunk":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await reader.read()  # then nothing, until the client leaves

    async def main() -> float:
        loop = asyncio.get_running_loop()
        async with raw_server(serve) as url, client_over(make_pool()) as client:
            provider = ProviderConfig(name="test", base_url=url, read_timeout_s=0.3)
            started = loop.time()
            with pytest.raises(UpstreamTimeout):
                response = await open_stream(client, Outgoing("POST", url, [], b"{}"), provider)
                try:
                    assert await response.read() == b"abc"
                    await response.read()
                finally:
                    response.close()
            return loop.time() - started

    assert 0.25 < asyncio.run(main()) < 5


def test_a_reader_that_stops_reading_stops_the_socket_being_read() -> None:
    """Backpressure: while nobody takes the body, the connection holds at most HIGH_WATER plus one socket read
    and the provider's writes stall, instead of the proxy buffering the whole response."""
    total = 64 * 1024 * 1024
    sent = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"{}")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)
        await reader.read()

    async def main() -> int:
        async with raw_server(serve) as url, client_over(make_pool()) as client:
            response = await open_stream(client, Outgoing("POST", url, [], b"{}"), PROVIDER)
            await asyncio.sleep(0.5)
            connection = response._connection
            assert connection is not None
            assert connection._buffered <= HIGH_WATER + 256 * 1024
            assert sent < total // 4  # the provider is held back by TCP, not drained into the proxy
            got = 0
            while chunk := await response.read():
                got += len(chunk)
            response.close()
            return got

    assert asyncio.run(main()) == total


def test_tls_upstreams_have_their_certificates_checked() -> None:
    """An https provider whose certificate no trusted authority signed is refused before any byte of the request
    is sent; the same server is served once its authority is trusted."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    requests = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await reader.readuntil(b"{}")
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with raw_server(serve, ssl_context=server_context) as url:
            url = url.replace("http://", "https://")
            async with client_over(make_pool()) as client:  # the default roots: this authority is unknown
                with pytest.raises(UpstreamConnectError, match="certificate did not verify"):
                    await client.get(url)
            assert requests == 0
            trusting = default_ssl_context()
            authority.configure_trust(trusting)
            async with client_over(UpstreamPool(10, 60.0, trusting)) as client:
                assert await client.get(url) == "secret"
            assert requests == 1

    asyncio.run(main())
