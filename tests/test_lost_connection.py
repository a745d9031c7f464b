"""A client that leaves mid-response (proxy.lost_connection): hypercorn stops writing to it, so asyncio logs no
"socket.send() raised exception." per write that could not go anywhere, and the app still hears
`http.disconnect`; the proxy still lets go of its upstream at once. A client that only half-closes still gets
the whole response.

Real hypercorn on 127.0.0.1, real sockets: the client reads part of a stream, then resets the connection
(SO_LINGER 0) or just closes it with data unread (which the kernel turns into a reset as well).
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import h11
import pytest

from proxy import lost_connection
from proxy.demo import Reply, Request
from proxy.serving import install_http11_trailers
from tests.servers import (
    CLIENT_KEY,
    UPSTREAM_KEY_ENV,
    UPSTREAM_SECRET,
    HypercornServer,
    LoopThread,
    ReplayUpstream,
    Script,
    Stack,
    serve_lifespan,
    start_stack,
)

# asyncio's warnings for writes to a lost connection (plain TCP, TLS), from the sixth such write on.
CONNLOST = {"socket.send() raised exception.", "SSL connection is closed"}
CHUNK = b"x" * 16 * 1024
CHUNKS = 2000  # 32 MiB: far more than the socket buffers hold when the client leaves
READ_BEFORE_LEAVING = 64 * 1024
TIMEOUT_S = 10.0


def connlost_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.getMessage() in CONNLOST]


def leave(sock: socket.socket, how: str) -> None:
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_at_least(sock: socket.socket, count: int) -> bytes:
    out = b""
    while len(out) < count:
        received = sock.recv(65536)
        assert received, "the server closed the connection early"
        out += received
    return out


class Streamer:
    """An ASGI app that streams CHUNKS as fast as it may and, as ASGI 2.1 lets it, pays no heed to a client that
    has gone until the last chunk is sent; then it waits for `http.disconnect`. /small streams 50 chunks of 1 KiB.
    """

    def __init__(self) -> None:
        self.done: asyncio.Queue[list[str]] = asyncio.Queue()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        chunk, count = (b"y" * 1024, 50) if scope["path"] == "/small" else (CHUNK, CHUNKS)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for _ in range(count):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        received: list[str] = []
        while not received or received[-1] != "http.disconnect":
            received.append((await asyncio.wait_for(receive(), TIMEOUT_S))["type"])
        await self.done.put(received)


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def streamer(loop: LoopThread) -> Iterator[tuple[HypercornServer, Streamer]]:
    install_http11_trailers()  # the process's hypercorn extensions, as `teeproxy serve` installs them
    app = Streamer()
    server = HypercornServer(loop, app)
    server.start()
    yield server, app
    server.stop()


@pytest.mark.parametrize("how", ["reset", "close"])
def test_an_app_that_keeps_sending_after_the_client_left_logs_nothing(
    streamer: tuple[HypercornServer, Streamer], loop: LoopThread, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    server, app = streamer
    caplog.set_level(logging.WARNING, logger="asyncio")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert read_at_least(sock, READ_BEFORE_LEAVING).startswith(b"HTTP/1.1 200 ")
        leave(sock, how)
    received = loop.run(asyncio.wait_for(app.done.get(), TIMEOUT_S))
    assert received[-1] == "http.disconnect"  # the app is still told
    assert connlost_warnings(caplog) == []


def test_a_client_that_half_closes_still_gets_the_whole_response(
    streamer: tuple[HypercornServer, Streamer], loop: LoopThread
) -> None:
    server, app = streamer
    client = h11.Connection(h11.CLIENT)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(client.send(h11.Request(method="GET", target="/small", headers=[("host", "x")])))
        sock.sendall(client.send(h11.EndOfMessage()))
        sock.shutdown(socket.SHUT_WR)  # our FIN: the request is complete, the response is still wanted
        body = b""
        while not isinstance(event := client.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                client.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Data):
                body += event.data
    assert body == b"y" * 1024 * 50
    loop.run(asyncio.wait_for(app.done.get(), TIMEOUT_S))


def server_sockets_of(port: int, client_port: int) -> list[str]:
    """The server's side of one connection in /proc/net/tcp: its TCP states (hex), [] once it is closed."""
    states = []
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            states.append(state)
    return states


def test_a_connection_the_client_closed_is_let_go_at_once(streamer: tuple[HypercornServer, Streamer]) -> None:
    """A keep-alive client that reads its response and closes: the server closes its side too, instead of
    holding the socket in CLOSE_WAIT (and the connection's objects) for the keep-alive timeout."""
    server, _ = streamer
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(b"GET /small HTTP/1.1\r\nhost: x\r\n\r\n")
        response = read_at_least(sock, 50 * 1024)
        while not response.endswith(b"\r\n0\r\n\r\n"):  # all of it: closing with bytes unread would reset
            response += read_at_least(sock, 1)
        assert response.startswith(b"HTTP/1.1 200 ")
        assert server_sockets_of(server.port, client_port) == ["01"]  # ESTABLISHED, kept alive
    deadline = time.monotonic() + 2.0  # hypercorn's keep-alive timeout is 5 s: without the fix, CLOSE_WAIT ("08")
    while server_sockets_of(server.port, client_port) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server_sockets_of(server.port, client_port) == []


def test_install_is_idempotent() -> None:
    from hypercorn.asyncio.tcp_server import TCPServer

    lost_connection.install()
    patched = TCPServer.protocol_send
    lost_connection.install()
    assert TCPServer.protocol_send is patched


def test_install_refuses_another_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.19.0" if name == "hypercorn" else real(name))
    with pytest.raises(RuntimeError, match=r"hypercorn 0\.19\.0 is installed"):
        lost_connection.install()


# --- through the proxy: a fast upstream, a client that reads a little and leaves ------------------------------

FRAME = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 950 + b'"}}]}\n\n'  # ~1 KiB
REQUEST = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": []}).encode()
# How soon after the client has gone the upstream sees its connection closed (measured: a few ms).
UPSTREAM_CLOSED_WITHIN_S = 0.05


class WatchedUpstream(ReplayUpstream):
    """The replay upstream, noting when a response could not be written because the proxy had let go."""

    def __init__(self) -> None:
        super().__init__()
        self.lost_at: list[float] = []

    async def _handle(self, request: Request, reply: Reply) -> None:
        try:
            await super()._handle(request, reply)
        except ConnectionError:
            self.lost_at.append(time.monotonic())
            raise


@pytest.fixture
def stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    monkeypatch.setattr("tests.servers.ReplayUpstream", WatchedUpstream)
    yield from start_stack(tmp_path, server_extra="keepalive_ping_s = 0")


@pytest.mark.parametrize("how", ["reset", "close"])
def test_leaving_a_proxied_stream_logs_nothing_and_closes_the_upstream_at_once(
    stack: Stack, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    assert isinstance(stack.upstream, WatchedUpstream)
    stack.upstream.script = Script(body=FRAME * 50_000, chunk_sizes=[16 * len(FRAME)])  # 50 MiB, no pauses
    caplog.set_level(logging.WARNING, logger="asyncio")
    streams = 5
    for n in range(streams):
        with socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=TIMEOUT_S) as sock:
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(REQUEST)}\r\n\r\n"
            ).encode()
            sock.sendall(head + REQUEST)
            assert read_at_least(sock, READ_BEFORE_LEAVING).startswith(b"HTTP/1.1 200 ")
            leave(sock, how)
            left_at = time.monotonic()
        deadline = left_at + TIMEOUT_S
        while len(stack.upstream.lost_at) <= n and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(stack.upstream.lost_at) == n + 1, "the upstream kept streaming after the client left"
        assert stack.upstream.lost_at[n] - left_at < UPSTREAM_CLOSED_WITHIN_S
    records = stack.records(at_least=streams)
    assert [r.outcome for r in records] == ["client_disconnected"] * streams
    assert connlost_warnings(caplog) == []
