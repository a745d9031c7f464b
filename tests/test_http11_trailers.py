"""HTTP/1.1 chunked trailers added to hypercorn: the exact bytes on the wire, with a tiny ASGI app."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import http11_trailers
from tests.servers import HypercornServer, LoopThread

TRAILERS = [(b"x-teeproxy-output-tokens", b"42"), (b"x-teeproxy-usage", b"reported")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Streams three chunks, then trailers, whatever the request said (the patch must cope)."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"trailer", b"x-teeproxy-output-tokens, x-teeproxy-usage")],
            "trailers": True,
        }
    )
    for part in (b"one ", b"two ", b"three"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await send({"type": "http.response.trailers", "headers": TRAILERS, "more_trailers": False})


@pytest.fixture(scope="module")
def server() -> Iterator[HypercornServer]:
    http11_trailers.install()
    loop = LoopThread()
    srv = HypercornServer(loop, app)
    srv.start()
    yield srv
    srv.stop()
    loop.close()


def exchange(port: int, requests: bytes, responses: int = 1) -> bytes:
    """Send raw request bytes; read until `responses` responses have ended (or the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(requests)
        data = b""
        while data.count(b"three") < responses or not data.endswith(b"\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_chunked_trailers_on_the_wire(server: HypercornServer) -> None:
    data = exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == (
        b"4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n"
        b"0\r\nx-teeproxy-output-tokens: 42\r\nx-teeproxy-usage: reported\r\n\r\n"
    )


def test_te_list_with_trailers_among_others(server: HypercornServer) -> None:
    data = exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nTE: gzip;q=0.5, Trailers\r\n\r\n")
    assert data.endswith(b"0\r\nx-teeproxy-output-tokens: 42\r\nx-teeproxy-usage: reported\r\n\r\n")


def test_without_te_no_trailers_and_no_hang(server: HypercornServer) -> None:
    data = exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.endswith(b"5\r\nthree\r\n0\r\n\r\n")
    assert b"x-teeproxy-output-tokens: 42" not in data


def test_http10_no_trailers(server: HypercornServer) -> None:
    data = exchange(server.port, b"GET / HTTP/1.0\r\nTE: trailers\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"one two three"
    assert b"chunked" not in head.lower()


def test_keep_alive_after_trailers(server: HypercornServer) -> None:
    one = b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n"
    data = exchange(server.port, one + one, responses=2)
    assert data.count(b"0\r\nx-teeproxy-output-tokens: 42\r\nx-teeproxy-usage: reported\r\n\r\n") == 2


def test_install_refuses_another_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http11_trailers, "_installed", False)
    monkeypatch.setattr(http11_trailers.importlib.metadata, "version", lambda name: "0.19.0")
    with pytest.raises(RuntimeError, match="hypercorn 0.19.0 is installed"):
        http11_trailers.install()
