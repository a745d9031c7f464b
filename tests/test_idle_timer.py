"""`proxy.idle_timer`: hypercorn's keep-alive timeout, kept as a timer instead of two tasks per request, still
closes an idle connection when it runs out, never one that is busy or came back in time, and at shutdown closes
every idle connection at once."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import idle_timer
from proxy.serving import install_http11_trailers
from tests.servers import HypercornServer, LoopThread, serve_lifespan

KEEP_ALIVE_S = 0.5
TIMEOUT_S = 10.0
SLOW_S = 3 * KEEP_ALIVE_S


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/ answers "ok"; /slow streams for three keep-alive timeouts."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    if scope["path"] == "/slow":
        for _ in range(6):
            await asyncio.sleep(SLOW_S / 6)
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"ok", "more_body": False})


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def server(loop: LoopThread) -> Iterator[HypercornServer]:
    install_http11_trailers()  # the process's hypercorn extensions, as `teeproxy serve` installs them
    server = HypercornServer(loop, app, keep_alive_timeout=KEEP_ALIVE_S)
    server.start()
    yield server
    server.stop()


def get(sock: socket.socket, path: str = "/") -> bytes:
    """One request on a kept-alive connection: its whole chunked response."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    response = b""
    while not response.endswith(b"\r\n0\r\n\r\n"):
        received = sock.recv(65536)
        assert received, "the server closed the connection"
        response += received
    return response


def closed_by_server_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (EOF), or None if it stayed open."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        received = sock.recv(1)
    except TimeoutError:
        return None
    assert received == b""
    return time.monotonic() - started


def test_an_idle_connection_is_closed_when_the_keep_alive_timeout_runs_out(server: HypercornServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        assert get(sock).endswith(b"ok\r\n0\r\n\r\n")
        waited = closed_by_server_within(sock, TIMEOUT_S)
    assert waited is not None and waited >= KEEP_ALIVE_S * 0.8


def test_each_request_starts_the_timeout_again(server: HypercornServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        for _ in range(3):  # 1.8 timeouts in all, never one between two requests
            assert get(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(KEEP_ALIVE_S * 0.6)
        assert get(sock).startswith(b"HTTP/1.1 200 ")


def test_a_response_longer_than_the_timeout_is_never_cut(server: HypercornServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        response = get(sock, "/slow")
        assert response.count(b"tick\n") == 6 and response.endswith(b"ok\r\n0\r\n\r\n")
        assert get(sock).startswith(b"HTTP/1.1 200 ")  # and the connection is still there after it


def test_shutdown_closes_idle_connections_at_once(loop: LoopThread) -> None:
    install_http11_trailers()
    server = HypercornServer(loop, app, keep_alive_timeout=60.0)
    server.start()
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) for _ in range(3)]
    try:
        for sock in sockets:
            assert get(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        server.stop()  # graceful: it waits for every connection to end
        assert time.monotonic() - started < 5.0  # not the 60 s keep-alive timeout
        for sock in sockets:
            assert closed_by_server_within(sock, 1.0) is not None
    finally:
        for sock in sockets:
            sock.close()


def test_install_is_idempotent_and_refuses_another_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercorn.asyncio import tcp_server

    idle_timer.install()
    module: Any = tcp_server
    installed = module.AsyncioSingleTask
    idle_timer.install()
    assert module.AsyncioSingleTask is installed
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.19.0")
    with pytest.raises(RuntimeError, match="hypercorn 0.19.0"):
        idle_timer.install()
