"""Backpressure: a client that stops reading makes the proxy stop reading the upstream, over HTTP/1.1 and HTTP/2
alike, so the proxy never holds more than a bounded amount per stream (32 KiB in hypercorn's HTTP/2 buffer, or
the socket buffers, plus one upstream read). The upstream's own counter of bytes written shows it: a 100 MiB
stream is not pulled through against a stalled reader. And a client that leaves with data still queued ends
its request: the record is written at once."""

from __future__ import annotations

import json
import pathlib
import socket
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import h11
import pytest

from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, start_stack

FRAME = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 950 + b'"}}]}\n\n'  # ~1 KiB
BODY = FRAME * (100 * 1024)  # ~100 MiB
REQUEST = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": []}).encode()
# Far more than a bounded relay lets through (kernel socket buffers on both sides of the proxy are a few MiB),
# far less than the 100 MiB an unbounded one pulls in the same time.
BOUND = 16 * 1024 * 1024


@pytest.fixture
def stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    yield from start_stack(tmp_path, server_extra="keepalive_ping_s = 0")


def written(stack: Stack) -> int:
    return sum(len(w) for w in stack.upstream.writes)


def settle(stack: Stack, seconds: float) -> int:
    """Bytes the upstream managed to write once the relay has had `seconds` to pull."""
    time.sleep(seconds)
    return written(stack)


def test_http11_reader_that_stalls_holds_the_upstream_back(stack: Stack) -> None:
    stack.upstream.script = Script(body=BODY, chunk_sizes=[64 * 1024])
    with socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(REQUEST)}\r\n\r\n"
        ).encode()
        sock.sendall(head + REQUEST)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        first = settle(stack, 1.5)
        second = settle(stack, 1.5)
        assert first < BOUND and second - first < 1024 * 1024  # it stopped, and stays stopped
    [record] = stack.records()
    assert record.outcome == "client_disconnected"


NUMBERED = b"".join(
    b'data: {"choices":[{"index":0,"delta":{"content":"%06d%s"}}]}\n\n' % (i, b"y" * 900) for i in range(8 * 1024)
)  # ~8 MiB of frames that each say where they belong


def test_http11_reader_that_stalls_then_reads_on_gets_every_byte_in_order(stack: Stack) -> None:
    """Reads go to the client straight from the upstream's callback while its socket takes them, through the
    relay's task while the client is slow: a stall in the middle of a stream, and the switch back and forth,
    lose, repeat or reorder no byte, and every byte is counted."""
    stack.upstream.script = Script(body=NUMBERED, chunk_sizes=[16 * 1024, 3000, 777])
    conn = h11.Connection(h11.CLIENT)
    body = bytearray()
    with socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(
            conn.send(
                h11.Request(
                    method="POST",
                    target="/v1/chat/completions",
                    headers=[
                        ("host", "x"),
                        ("authorization", f"Bearer {CLIENT_KEY}"),
                        ("content-type", "application/json"),
                        ("content-length", str(len(REQUEST))),
                    ],
                )
            )
            + conn.send(h11.Data(data=REQUEST))
            + conn.send(h11.EndOfMessage())
        )
        stalled = False
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if not stalled and len(body) > 1024 * 1024:
                    time.sleep(1.0)  # the client's socket fills up; the relay waits for it
                    stalled = True
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    assert stalled and bytes(body) == NUMBERED
    [record] = stack.records()
    assert record.outcome == "completed" and record.bytes_to_client == len(NUMBERED)


def h2_request(port: int, window: int) -> tuple[socket.socket, h2.connection.H2Connection, int]:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
    )
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(conn.data_to_send())
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":scheme", "http"),
            (":authority", f"127.0.0.1:{port}"),
            ("authorization", f"Bearer {CLIENT_KEY}"),
            ("content-type", "application/json"),
        ],
    )
    conn.send_data(stream_id, REQUEST, end_stream=True)
    sock.sendall(conn.data_to_send())
    return sock, conn, stream_id


def read_some(sock: socket.socket, conn: h2.connection.H2Connection, at_least: int) -> int:
    """Read (without ever opening the window) until `at_least` body bytes arrived or nothing more comes."""
    got = 0
    sock.settimeout(1.0)
    while got < at_least:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                got += len(event.data)
        sock.sendall(conn.data_to_send())  # settings acks and pings only: no WINDOW_UPDATE
    return got


def test_http2_client_with_a_closed_window_holds_the_upstream_back(stack: Stack) -> None:
    stack.upstream.script = Script(body=BODY, chunk_sizes=[64 * 1024])
    sock, conn, _ = h2_request(stack.proxy.port, window=16 * 1024)
    with sock:
        got = read_some(sock, conn, 16 * 1024)
        assert 0 < got <= 16 * 1024  # the client took what its window allowed, and then stopped
        first = settle(stack, 1.5)
        second = settle(stack, 1.5)
        assert first < BOUND and second - first < 1024 * 1024
    [record] = stack.records()
    assert record.outcome == "client_disconnected"


def test_http2_client_that_resets_with_data_queued_ends_its_request(stack: Stack) -> None:
    stack.upstream.script = Script(body=FRAME * 2000, chunk_sizes=[64 * 1024], end_pause_s=30)
    sock, conn, stream_id = h2_request(stack.proxy.port, window=8 * 1024)
    with sock:
        read_some(sock, conn, 8 * 1024)
        time.sleep(0.5)  # the proxy has more queued for this stream than the window lets out
        conn.reset_stream(stream_id)
        sock.sendall(conn.data_to_send())
        started = time.monotonic()
        [record] = stack.records()
        assert time.monotonic() - started < 5  # not at shutdown
        assert record.outcome == "client_disconnected"
