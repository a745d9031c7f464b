"""HTTP/1.1 chunked trailers added to hypercorn (proxy.http11_trailers), checked on the wire.

A real hypercorn serves a tiny ASGI app on 127.0.0.1 from a background thread; the clients are blocking and
real: raw sockets, h11, curl, and h2 with prior knowledge for hypercorn's own HTTP/2 path.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import h11
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from proxy import http11_trailers
from tests.servers import serve_lifespan

TRAILERS = [(b"x-teeproxy-output-tokens", b"42"), (b"x-teeproxy-usage", b"reported")]
TRAILER_SECTION = b"0\r\nx-teeproxy-output-tokens: 42\r\nx-teeproxy-usage: reported\r\n\r\n"
CHUNKS = (b"one ", b"two ", b"three")
BODY = b"".join(CHUNKS)
TIMEOUT_S = 5.0


class Hypercorn:
    """hypercorn.asyncio.serve on 127.0.0.1, on a port the kernel picks, in a thread with its own event loop.

    The socket is bound and listening before hypercorn starts (`fd://`), so the port is known at once and
    early connections wait in the backlog: no readiness polling. hypercorn's error log is kept in `records`.
    """

    def __init__(self, app: Any) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = listener.getsockname()[1]
        self.records: list[logging.LogRecord] = []
        log = logging.Logger("test.hypercorn", logging.INFO)  # not registered: nothing else sees it
        log.addHandler(_ListHandler(self.records))
        self.config = Config()
        self.config.bind = [f"fd://{listener.detach()}"]  # hypercorn's socket owns the fd from here on
        self.config.accesslog = None
        self.config.errorlog = log
        self.config.graceful_timeout = 2.0
        self._app = app
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hypercorn", daemon=True)
        self._thread.start()
        assert self._started.wait(TIMEOUT_S)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # re-raised by stop(), in the test's thread
            self._error = error

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        await serve(self._app, self.config, shutdown_trigger=self._stop.wait)

    def call_soon(self, callback: Any) -> None:
        self.loop.call_soon_threadsafe(callback)

    def problems(self) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno >= logging.WARNING]

    def stop(self) -> None:
        self.call_soon(self._stop.set)
        self._thread.join(TIMEOUT_S * 2)
        assert not self._thread.is_alive()
        if self._error is not None:
            raise self._error


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)


class App:
    """Streams CHUNKS as separate body messages, then TRAILERS, always with `trailers: True` (the patch copes).

    /gated waits for `gate` after the first chunk; /content-length declares its length too; /slow streams
    slowly (for a client that leaves) and sets `finished` at the end.
    """

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.finished = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        path = scope["path"]
        headers = [(b"content-type", b"text/plain"), (b"trailer", b"x-teeproxy-output-tokens, x-teeproxy-usage")]
        if path == "/content-length":
            headers.append((b"content-length", str(len(BODY)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers, "trailers": True})
        for i, part in enumerate(CHUNKS * (4 if path == "/slow" else 1)):
            if i == 1 and path == "/gated":
                await asyncio.wait_for(self.gate.wait(), TIMEOUT_S)
            if path == "/slow":
                await asyncio.sleep(0.02)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await send({"type": "http.response.trailers", "headers": TRAILERS, "more_trailers": False})
        if path == "/slow":
            self.finished.set()


@pytest.fixture(scope="module")
def app() -> App:
    return App()


@pytest.fixture(scope="module")
def server(app: App) -> Iterator[Hypercorn]:
    http11_trailers.install()
    srv = Hypercorn(app)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def no_server_problems(request: pytest.FixtureRequest) -> Iterator[None]:
    """hypercorn logs app errors rather than raising them: any warning or error in its log fails the test."""
    yield
    if "server" in request.fixturenames:
        srv: Hypercorn = request.getfixturevalue("server")
        assert srv.problems() == []


def raw_exchange(port: int, request: bytes) -> bytes:
    """One request; read until the server closes (HTTP/1.0) or the trailer section's blank line."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(request)
        data = b""
        while not (b"\r\n\r\n" in data and data.endswith(b"0\r\n\r\n") or data.endswith(TRAILER_SECTION)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


class H11Client:
    """A raw h11 client on one connection: every event it sees, and every byte."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.conn = h11.Connection(h11.CLIENT)
        self.raw = b""

    def __enter__(self) -> H11Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, target: str, headers: list[tuple[bytes, bytes]], method: bytes = b"GET") -> None:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()  # raises if either side said it would close
        self.raw = b""
        request = h11.Request(method=method, target=target, headers=[(b"host", b"127.0.0.1"), *headers])
        self.sock.sendall(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))

    def next_event(self) -> Any:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            data = self.sock.recv(65536)
            self.raw += data
            self.conn.receive_data(data)
        return event

    def response(self) -> tuple[h11.Response, list[bytes], h11.EndOfMessage]:
        """Read one response to its end: the head, the body as received (one item per Data event), the end."""
        head = self.next_event()
        assert isinstance(head, h11.Response)
        chunks = []
        while isinstance(event := self.next_event(), h11.Data):
            chunks.append(bytes(event.data))
        assert isinstance(event, h11.EndOfMessage)
        return head, chunks, event


TE_TRAILERS = [(b"te", b"trailers")]


def test_trailers_in_the_last_chunk(server: Hypercorn) -> None:
    with H11Client(server.port) as client:
        client.request("/", TE_TRAILERS)
        head, chunks, end = client.response()
        raw = client.raw
    assert head.status_code == 200
    assert (b"transfer-encoding", b"chunked") in head.headers
    assert not any(name == b"content-length" for name, _ in head.headers)
    assert end.headers == TRAILERS
    assert raw.endswith(b"\r\n\r\n4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n" + TRAILER_SECTION)
    assert b"".join(chunks) == BODY


def test_each_body_message_is_sent_at_once(server: Hypercorn, app: App) -> None:
    with H11Client(server.port) as client:
        client.request("/gated", TE_TRAILERS)
        assert isinstance(client.next_event(), h11.Response)
        first = client.next_event()  # arrives while the app waits on the gate
        assert isinstance(first, h11.Data) and bytes(first.data) == b"one "
        server.call_soon(app.gate.set)
        rest = []
        while isinstance(event := client.next_event(), h11.Data):
            rest.append(bytes(event.data))
        assert b"".join(rest) == b"two three"
        assert event.headers == TRAILERS


def test_te_is_a_list_in_http11(server: Hypercorn) -> None:
    data = raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nTE: gzip;q=0.5, Trailers\r\n\r\n")
    assert data.endswith(b"5\r\nthree\r\n" + TRAILER_SECTION)


def test_curl_prints_the_trailers(server: Hypercorn) -> None:
    result = subprocess.run(
        ["/usr/bin/curl", "-sS", "--http1.1", "-i", "-H", "TE: trailers", f"http://127.0.0.1:{server.port}/"],
        capture_output=True,
        timeout=TIMEOUT_S * 2,
        check=True,
    )
    _, _, after_head = result.stdout.partition(b"\r\n\r\n")
    assert after_head == BODY + b"x-teeproxy-output-tokens: 42\r\nx-teeproxy-usage: reported\r\n"


def test_without_te_no_trailers_and_no_hang(server: Hypercorn) -> None:
    with H11Client(server.port) as client:
        client.request("/", [])
        head, chunks, end = client.response()
        raw = client.raw
    assert (b"transfer-encoding", b"chunked") in head.headers
    assert b"".join(chunks) == BODY
    assert end.headers == []
    assert raw.endswith(b"5\r\nthree\r\n0\r\n\r\n")


def test_http10_gets_the_body_and_no_trailers(server: Hypercorn) -> None:
    data = raw_exchange(server.port, b"GET / HTTP/1.0\r\nTE: trailers\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"chunked" not in head.lower()
    assert body == BODY


def test_content_length_response_drops_trailers(server: Hypercorn) -> None:
    with H11Client(server.port) as client:
        client.request("/content-length", TE_TRAILERS)
        head, chunks, end = client.response()
        client.request("/", TE_TRAILERS)  # the connection is still good
        assert client.response()[2].headers == TRAILERS
    assert (b"content-length", b"13") in head.headers
    assert b"".join(chunks) == BODY
    assert end.headers == []


def test_head_request_no_body_no_trailers(server: Hypercorn) -> None:
    with H11Client(server.port) as client:
        client.request("/", TE_TRAILERS, method=b"HEAD")
        head, chunks, end = client.response()
        client.request("/", TE_TRAILERS)
        assert client.response()[2].headers == TRAILERS
    assert head.status_code == 200
    assert chunks == []
    assert end.headers == []


def test_keep_alive_after_trailers(server: Hypercorn) -> None:
    with H11Client(server.port) as client:
        for te in (TE_TRAILERS, [], TE_TRAILERS):
            client.request("/", te)
            head, chunks, end = client.response()
            assert (b"connection", b"close") not in head.headers
            assert b"".join(chunks) == BODY
            assert end.headers == (TRAILERS if te else [])
        assert client.conn.our_state is client.conn.their_state is h11.DONE


def test_client_leaves_mid_stream(server: Hypercorn, app: App) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert app.finished.wait(TIMEOUT_S)
    with H11Client(server.port) as client:  # still serving
        client.request("/", TE_TRAILERS)
        assert client.response()[2].headers == TRAILERS


def test_http2_prior_knowledge_keeps_hypercorns_trailers(server: Hypercorn) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    request = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"127.0.0.1")]
    body, trailers, ended = b"", None, False
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [*request, (b"te", b"trailers")], end_stream=True)
        sock.sendall(conn.data_to_send())
        while not ended:
            data = sock.recv(65536)
            assert data, "server closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = event.headers
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
        conn.close_connection()
        sock.sendall(conn.data_to_send())
    assert body == BODY
    assert trailers == TRAILERS


def test_install_is_idempotent() -> None:
    from hypercorn.protocol.http_stream import HTTPStream

    http11_trailers.install()
    patched = HTTPStream.app_send
    http11_trailers.install()
    assert HTTPStream.app_send is patched


def test_install_refuses_another_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.19.0")
    with pytest.raises(RuntimeError, match=r"hypercorn 0\.19\.0 is installed"):
        http11_trailers.install()


@pytest.mark.parametrize(
    ("version", "headers", "accepts"),
    [
        ("1.1", [(b"te", b"trailers")], True),
        ("1.1", [(b"TE", b"gzip;q=0.5, Trailers")], True),
        ("1.1", [(b"te", b"gzip"), (b"te", b"trailers;q=1")], True),
        ("1.1", [(b"te", b"gzip, deflate")], False),
        ("1.1", [(b"x-te", b"trailers")], False),
        ("1.1", [], False),
        ("1.0", [(b"te", b"trailers")], False),
    ],
)
def test_accepts_trailers(version: str, headers: list[tuple[bytes, bytes]], accepts: bool) -> None:
    assert http11_trailers.accepts_trailers(version, headers) is accepts
