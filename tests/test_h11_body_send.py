"""`proxy.h11_body_send`: a streamed HTTP/1.1 chunk goes to the socket in one step, framed exactly as h11 frames
it, and every other message still takes hypercorn's own path (trailers, the last chunk, HTTP/1.0, HEAD)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import h11
import pytest
from hypercorn.protocol.h11 import H11Protocol

from proxy import client_connection, h11_body_send, http11_trailers
from tests.servers import serve_lifespan
from tests.test_http11_trailers import (
    BODY,
    TRAILER_SECTION,
    TRAILERS,
    App,
    H11Client,
    Hypercorn,
    raw_exchange,
)

TE_TRAILERS = [(b"te", b"trailers")]


@pytest.fixture(scope="module")
def server() -> Iterator[Hypercorn]:
    http11_trailers.install()
    h11_body_send.install()  # as `teeproxy serve` installs them: the trailers patch first
    srv = Hypercorn(App())
    yield srv
    srv.stop()
    assert srv.problems() == []


@pytest.fixture
def h11_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The events hypercorn still asks h11 to write."""
    seen: list[str] = []
    original = H11Protocol._send_h11_event

    async def recording(self: H11Protocol, event: Any) -> None:
        seen.append(type(event).__name__)
        await original(self, event)

    monkeypatch.setattr(H11Protocol, "_send_h11_event", recording)
    return seen


def test_middle_chunks_skip_h11_and_the_bytes_are_h11s(server: Hypercorn, h11_events: list[str]) -> None:
    with H11Client(server.port) as client:
        client.request("/", TE_TRAILERS)
        head, chunks, end = client.response()
        raw = client.raw
    assert head.status_code == 200 and end.headers == TRAILERS
    assert raw.endswith(b"\r\n\r\n4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n" + TRAILER_SECTION)
    assert b"".join(chunks) == BODY
    # The head and the end (with its trailers) are h11's; the three chunks were framed here.
    assert h11_events == ["Response", "EndOfMessage"]


def test_keep_alive_carries_on_after_a_short_path_response(server: Hypercorn) -> None:
    with H11Client(server.port) as client:
        for _ in range(3):
            client.request("/", TE_TRAILERS)
            assert client.response()[2].headers == TRAILERS


@pytest.mark.parametrize(
    ("request_bytes", "ending"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", b"\r\n\r\none two three"),  # HTTP/1.0: no chunked coding, h11's writer
        (b"GET /content-length HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"\r\n\r\none two three"),
    ],
)
def test_other_framings_take_hypercorns_path(
    server: Hypercorn, h11_events: list[str], request_bytes: bytes, ending: bytes
) -> None:
    assert raw_exchange(server.port, request_bytes).endswith(ending)
    assert h11_events.count("Data") == 3


def test_install_is_idempotent_and_refuses_another_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercorn.protocol.http_stream import HTTPStream

    patched = HTTPStream.app_send
    h11_body_send.install()
    assert HTTPStream.app_send is patched
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.19.0" if name == "hypercorn" else "0.16.0")
    with pytest.raises(RuntimeError, match="hypercorn 0.18.x"):
        h11_body_send.install()


def test_h11_is_what_the_short_path_assumes() -> None:
    """A Data event changes no h11 state while sending a chunked body: skipping h11 for it loses nothing."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    connection.next_event()
    connection.send(h11.Response(status_code=200, headers=[]))
    before = (connection.our_state, type(connection._writer))  # type: ignore[attr-defined]
    assert connection.send(h11.Data(data=b"abc")) == b"3\r\nabc\r\n"
    assert (connection.our_state, type(connection._writer)) == before  # type: ignore[attr-defined]


class HeadFirst:
    """Starts the response, then waits (an upstream that has not sent its first chunk yet) until `go` is set."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await self.go.wait()
        await send({"type": "http.response.body", "body": b"late", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_a_head_whose_first_chunk_is_late_goes_out_at_once() -> None:
    """A client whose upstream is slow to start gets the status and headers right away, and the chunk when it
    comes (nothing on the short path holds the head back)."""
    http11_trailers.install()
    h11_body_send.install()
    app = HeadFirst()
    srv = Hypercorn(app)
    try:
        with H11Client(srv.port) as client:
            client.request("/", [])
            head = client.next_event()  # arrives while the app is still waiting
            assert isinstance(head, h11.Response) and head.status_code == 200
            srv.call_soon(app.go.set)
            data = client.next_event()
            assert isinstance(data, h11.Data) and bytes(data.data) == b"late"
            assert isinstance(client.next_event(), h11.EndOfMessage)
    finally:
        srv.stop()
    assert srv.problems() == []


class Direct:
    """Writes its chunks with the direct writer where there is one (the relay's paced path), with `send()` where
    there is none or it is not ready; `ways` says which it took."""

    def __init__(self) -> None:
        self.ways: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        headers = [(b"content-type", b"text/plain")]
        if scope["path"] == "/content-length":
            headers.append((b"content-length", b"13"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        writer = client_connection.direct_body_writer(send)
        for part in (b"one ", b"two ", b"three"):
            if writer is not None and writer.ready():
                writer.write(part)
                self.ways.append("direct")
            else:
                await send({"type": "http.response.body", "body": part, "more_body": True})
                self.ways.append("send")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture
def direct_server() -> Iterator[tuple[Hypercorn, Direct]]:
    http11_trailers.install()
    h11_body_send.install()
    app = Direct()
    srv = Hypercorn(app)
    yield srv, app
    srv.stop()
    assert srv.problems() == []


def test_the_direct_writer_frames_chunks_as_h11_does(
    direct_server: tuple[Hypercorn, Direct], h11_events: list[str]
) -> None:
    """The relay's callback path: chunks written without a coroutine are on the wire exactly as h11 frames them,
    and the connection carries on to its next response."""
    server, app = direct_server
    with H11Client(server.port) as client:
        for _ in range(2):
            client.request("/", [])
            head, chunks, _ = client.response()
            assert head.status_code == 200 and b"".join(chunks) == BODY
            assert client.raw.endswith(b"\r\n\r\n4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n")
    assert app.ways == ["direct"] * 6
    assert h11_events == ["Response", "EndOfMessage"] * 2


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET / HTTP/1.0\r\n\r\n", b"GET /content-length HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
)
def test_there_is_no_direct_writer_where_hypercorn_must_frame(
    direct_server: tuple[Hypercorn, Direct], request_bytes: bytes
) -> None:
    server, app = direct_server
    assert raw_exchange(server.port, request_bytes).endswith(b"\r\n\r\none two three")
    assert app.ways == ["send"] * 3
