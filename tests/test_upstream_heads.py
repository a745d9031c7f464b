"""The upstream heads (`proxy.parsers.head`): the request head as written on the wire, and the response head as
read, wherever the network cuts it; the heads refused, and what the proxy then does with them."""

from __future__ import annotations

import asyncio

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import UpstreamProtocolError
from proxy.parsers.head import MAX_HEAD_BYTES, HeadError, ResponseHead, ResponseHeadReader, request_head
from proxy.upstream_pool import UpstreamPool
from tests.test_body_framing import split_at

HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"x-request-id:req_123   \r\n"
    b"openai-processing-ms: \t 17\r\n"
    b"\r\n"
)
PARSED = ResponseHead(
    200,
    b"1.1",
    [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"transfer-encoding", b"chunked"),
        (b"x-request-id", b"req_123"),
        (b"openai-processing-ms", b"17"),
    ],
    keep_alive=True,
)


def read_head(parts: list[bytes]) -> tuple[ResponseHead, bytes]:
    reader = ResponseHeadReader()
    for i, part in enumerate(parts):
        out = reader.feed(part)
        if out is not None:
            head, rest = out
            return head, rest + b"".join(parts[i + 1 :])
    raise AssertionError("the head never completed")


# -- the response head


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=1 << 12), max_size=20),
    st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"]),
    st.binary(max_size=64),
)
def test_the_same_head_and_body_bytes_however_the_input_is_cut(where: list[int], interim: bytes, body: bytes) -> None:
    head, rest = read_head(split_at(interim + HEAD + body, where))
    assert head == PARSED
    assert rest == body


@pytest.mark.parametrize(
    ("wire", "status", "headers", "keep_alive"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, [], True),
        (b"HTTP/1.1 200 \r\n\r\n", 200, [], True),  # an empty reason
        (b"HTTP/1.1 200\r\n\r\n", 200, [], True),  # no reason at all
        (b"HTTP/1.0 200 OK\r\n\r\n", 200, [], False),
        (
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n",
            200,
            [(b"connection", b"keep-alive, Close")],
            False,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\n", 200, [(b"content-length", b"5")], True),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n", 200, [(b"content-length", b"5")], True),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 007\r\n\r\n", 200, [(b"content-length", b"7")], True),
        # Both: Transfer-Encoding wins, and Content-Length is not forwarded (RFC 9112 §6.3).
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: Chunked\r\n\r\n",
            200,
            [(b"transfer-encoding", b"Chunked")],
            True,
        ),
        (b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\n\r\n", 429, [(b"retry-after", b"2")], True),
        (b"HTTP/1.1 200 OK\r\nx-bytes: caf\xc3\xa9\r\n\r\n", 200, [(b"x-bytes", b"caf\xc3\xa9")], True),  # obs-text
    ],
)
def test_heads_read(wire: bytes, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
    head, rest = read_head([wire])
    assert (head.status, head.headers, head.keep_alive, rest) == (status, headers, keep_alive, b"")


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: line\r\n\r\n",  # obs-fold, refused (RFC 9112 §5.2)
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\tcontinued\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad name: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: empty-name\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: 1\x00\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: 1\rx-b: 2\r\n\r\n",  # a bare CR
        b"HTTP/1.1 200 OK\r\nx-a: 1\nx-b: 2\r\n\r\n",  # a bare LF
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0x10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\n",
    ],
)
def test_heads_refused(wire: bytes) -> None:
    with pytest.raises(HeadError):
        ResponseHeadReader().feed(wire)


def test_a_head_past_the_limit_is_refused_even_before_it_ends() -> None:
    reader = ResponseHeadReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\n") is None
    with pytest.raises(HeadError):
        for _ in range(MAX_HEAD_BYTES // 15 + 1):
            reader.feed(b"x-pad: 123456\r\n")


def test_heads_agree_with_h11() -> None:
    """The same head, read by h11 (which read them before): the same status, version and fields."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(HEAD)
    event = conn.next_event()
    assert isinstance(event, h11.Response)
    head, _ = read_head([HEAD])
    assert (head.status, head.http_version, head.headers) == (
        event.status_code,
        event.http_version,
        list(event.headers),
    )


# -- the request head


def test_the_request_head_on_the_wire() -> None:
    wire = request_head(
        b"POST",
        b"/v1/chat/completions?x=1",
        [(b"host", b"api.example"), (b"authorization", b"Bearer sk-1"), (b"content-length", b"2")],
    )
    assert wire == (
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: api.example\r\nauthorization: Bearer sk-1\r\n"
        b"content-length: 2\r\n\r\n"
    )
    # h11, as a server, reads it as that request.
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire + b"{}")
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    assert (event.method, event.target, event.headers[1]) == (
        b"POST",
        b"/v1/chat/completions?x=1",
        (b"authorization", b"Bearer sk-1"),
    )


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"POST", b"/v1", [(b"authorization", b"Bearer sk-1\r\nx-injected: 1")]),  # a key with a line end in it
        (b"POST", b"/v1", [(b"authorization", b"Bearer sk-1\nx: 1")]),
        (b"POST", b"/v1", [(b"authorization", b"Bearer sk-1\r\n")]),
        (b"POST", b"/v1", [(b"x-a", b"1"), (b"authorization", b"\r\nx-b: 2")]),
        (b"POST", b"/v1", [(b"authorization", b"Bearer sk\x00")]),
        (b"POST", b"/v1", [(b"x-a\r\nx-b", b"1")]),
        (b"POST", b"/v1", [(b"x a", b"1")]),
        (b"POST", b"/v1", [(b"", b"1")]),
        (b"POST", b"/v1 HTTP/1.1\r\nx: y", []),
        (b"POST", b"", []),
        (b"PO ST", b"/v1", []),
    ],
)
def test_request_heads_that_could_split_are_refused(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(HeadError):
        request_head(method, target, headers)


def test_a_key_with_a_line_end_never_reaches_the_wire() -> None:
    """A provider key from the environment with a CR LF in it: the request is refused before any byte is sent,
    and the error names no key."""
    received = bytearray()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read(65536))
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool(max_connections=1, keepalive_expiry=5.0)
        try:
            connection = await pool.acquire(("http", "127.0.0.1", port), 5.0, 5.0)
            with pytest.raises(UpstreamProtocolError) as info:
                await connection.send_request(
                    b"POST", b"/v1", [(b"authorization", b"Bearer sk-secret\r\nx-injected: 1")], b"{}", 5.0
                )
            assert "sk-secret" not in str(info.value)
            pool.discard(connection)
            await asyncio.sleep(0.05)
            assert bytes(received) == b""
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
