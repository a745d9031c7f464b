"""Closed connections are freed by reference counting, so the tuned collector (`proxy.collector`, which makes
full collections rare) never has a pile of dead connections to find: client connections hypercorn served
(`proxy.lost_connection`) and upstream connections the pool closed (`proxy.transport_cycles`).

Each test turns the collector off while connections come and go, then checks with weak references that every
connection object is already gone.
"""

from __future__ import annotations

import asyncio
import gc
import pathlib
import socket
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.config import ProviderConfig
from proxy.providers.base import Outgoing
from proxy.upstream import UpstreamClient, open_stream
from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, h11_post, start_stack


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_client_connections_hypercorn_closed_are_gone(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, collector_off: None
) -> None:
    from hypercorn.asyncio.tcp_server import TCPServer

    servers: list[weakref.ref[Any]] = []
    transports: list[weakref.ref[Any]] = []
    original_init = TCPServer.__init__

    def remembering_init(self: TCPServer, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        servers.append(weakref.ref(self))
        transports.append(weakref.ref(self.writer.transport))

    monkeypatch.setattr(TCPServer, "__init__", remembering_init)
    stack_iter = start_stack(tmp_path)
    stack: Stack = next(stack_iter)
    try:
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", stack.proxy.port)) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                response = b""
                while not response.endswith(b'"ok"}'):
                    response += sock.recv(4096)
                assert response.startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while any(ref() is not None for ref in servers) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        next(stack_iter, None)
    assert len(servers) == 10
    assert [ref() for ref in servers] == [None] * 10
    assert [ref() for ref in transports] == [None] * 10


def test_a_proxied_request_leaves_nothing_for_the_collector(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, collector_off: None
) -> None:
    """The exchange and everything hung on it (meter, parser, the client-side stream, hypercorn's stream) are
    freed when the request ends."""
    from proxy.exchange import Exchange

    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    stack_iter = start_stack(tmp_path)
    stack: Stack = next(stack_iter)
    try:
        stack.upstream.script = Script(body=b'data: {"choices":[]}\n\ndata: [DONE]\n\n')
        for _ in range(10):
            head, body, _ = h11_post(
                stack.proxy.port,
                "/v1/chat/completions",
                b'{"model": "gpt-4o-mini", "messages": [], "stream": true}',
                [("authorization", f"Bearer {CLIENT_KEY}")],
            )
            assert head.status_code == 200 and body.endswith(b"data: [DONE]\n\n")
        stack.records(at_least=10)
        time.sleep(0.2)
        alive = [o for o in gc.get_objects() if isinstance(o, Exchange)]
    finally:
        next(stack_iter, None)
    assert alive == []


def test_upstream_connections_the_pool_closed_are_gone(collector_off: None) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"{}")
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def main() -> list[weakref.ref[Any]]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        provider = ProviderConfig(name="test", base_url=url)
        client = UpstreamClient()
        refs: list[weakref.ref[Any]] = []
        for _ in range(10):
            response = await open_stream(client, Outgoing("POST", url, [], b"{}"), provider)
            connection = response._connection
            assert connection is not None
            refs.append(weakref.ref(connection._transport))
            while await response.read():
                pass
            response.close()  # `connection: close`: not kept
            del connection, response
        await asyncio.sleep(0.1)
        await client.aclose()
        server.close()
        await server.wait_closed()
        return refs

    refs = asyncio.run(main())
    assert [ref() for ref in refs] == [None] * 10
