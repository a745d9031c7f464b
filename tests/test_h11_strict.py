"""A bare LF in an HTTP/1.1 request head (proxy.h11_strict): refused with 400 before the app runs, on the wire.

The proxy runs under a real hypercorn on 127.0.0.1; the client is a raw socket sending the exact bytes. A head
whose lines end in a lone LF is read differently by a front proxy that ends lines only at CRLF (RFC 9112 §2.2,
§11.2), so it gets a 400, the connection is closed, nothing reaches the upstream, and whatever was pipelined
behind it is not answered. Bodies may hold LFs as they like, and HTTP/2 is not touched.
"""

from __future__ import annotations

import importlib.metadata
import json
import socket
import time
from collections.abc import Iterator

import h11
import httpx
import pytest
from h11._receivebuffer import ReceiveBuffer
from hypothesis import given
from hypothesis import strategies as st

from proxy import h11_strict
from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, start_stack

BODY = json.dumps({"model": "gpt-4o-mini", "messages": []}).encode()
READ_S = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
        yield from start_stack(tmp_path_factory.mktemp("h11-strict"))


@pytest.fixture
def stack(server: Stack) -> Stack:
    server.upstream.requests.clear()
    server.upstream.script = Script(body=b'{"ok": true}', content_type=b"application/json")
    return server


def head(
    *,
    request_line_end: bytes = b"\r\n",
    after_host: bytes = b"\r\n",
    end: bytes = b"\r\n\r\n",
    extra: bytes = b"",
    framing: bytes = b"content-length: " + str(len(BODY)).encode(),
) -> bytes:
    """A POST head; the `*_end` arguments are its line terminators (`end`: the last field's and the blank line)."""
    return (
        b"POST /v1/chat/completions HTTP/1.1" + request_line_end
        + b"host: 127.0.0.1" + after_host
        + b"authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
        + b"content-type: application/json\r\n"
        + extra
        + framing + end
    )  # fmt: skip


GOOD = head() + BODY  # keep-alive
LAST = head(extra=b"connection: close\r\n") + BODY  # the server closes after answering it


def exchange(stack: Stack, raw: bytes) -> tuple[bytes, bool]:
    """Send `raw` at once; everything the server writes, and whether it closed the connection (within READ_S)."""
    with socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=READ_S) as sock:
        sock.sendall(raw)
        out = b""
        deadline = time.monotonic() + READ_S
        while time.monotonic() < deadline:
            try:
                received = sock.recv(65536)
            except TimeoutError:
                return out, False
            if not received:
                return out, True
            out += received
        return out, False


@pytest.mark.parametrize(
    "raw",
    [
        head(after_host=b"\n") + BODY,  # a field line ended by LF: the next field starts there for h11
        head(after_host=b"\nx-smuggled: 1\r\n") + BODY,
        head(end=b"\n\n") + BODY,  # the head ended by a bare blank line
        head(end=b"\r\n\n") + BODY,  # CRLF, then a bare LF as the blank line
        head(request_line_end=b"\n") + BODY,  # in the request line
        b"\n" + GOOD,  # a bare LF before the request line
    ],
    ids=["between-fields", "smuggled-field", "lf-lf-end", "crlf-lf-end", "request-line", "leading"],
)
def test_a_bare_lf_in_the_head_is_a_400_and_the_connection_closes(stack: Stack, raw: bytes) -> None:
    out, closed = exchange(stack, raw)
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert b"\r\nconnection: close\r\n" in out.lower()
    assert closed
    assert stack.upstream.requests == []


def test_a_request_pipelined_behind_a_refused_one_is_not_answered(stack: Stack) -> None:
    out, closed = exchange(stack, head(after_host=b"\n") + BODY + GOOD + GOOD)
    assert out.startswith(b"HTTP/1.1 400 ")
    assert out.count(b"HTTP/1.1 ") == 1
    assert closed
    assert stack.upstream.requests == []


def test_a_bare_lf_on_a_later_request_of_a_keep_alive_connection(stack: Stack) -> None:
    out, closed = exchange(stack, GOOD + head(end=b"\n\n") + BODY + LAST)
    first, second = out.split(b"HTTP/1.1 ")[1:]  # two responses, no third
    assert first.startswith(b"200 ") and second.startswith(b"400 ")
    assert closed
    assert len(stack.upstream.requests) == 1


def test_a_crlf_request_on_the_same_server_is_served(stack: Stack) -> None:
    for _ in range(2):  # before and after refusing one
        out, closed = exchange(stack, LAST)
        assert out.startswith(b"HTTP/1.1 200 "), out[:200]
        assert b'{"ok": true}' in out and closed
        exchange(stack, head(after_host=b"\n") + BODY)
    assert len(stack.upstream.requests) == 2


def test_lfs_in_the_body_are_not_the_head(stack: Stack) -> None:
    body = b'{\n"model": "gpt-4o-mini",\n"messages": []\n}\n\n'
    chunked = head(extra=b"connection: close\r\n", framing=b"transfer-encoding: chunked")
    out, closed = exchange(stack, chunked + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert closed
    [seen] = stack.upstream.requests
    assert json.loads(seen.body) == json.loads(body)


def test_a_bare_lf_in_a_chunked_trailer_section_is_refused(stack: Stack) -> None:
    chunked = head(framing=b"transfer-encoding: chunked")
    out, closed = exchange(stack, chunked + f"{len(BODY):x}\r\n".encode() + BODY + b"\r\n0\r\nx-a: 1\nx-b: 2\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert closed
    assert stack.upstream.requests == []


def test_http2_is_not_touched(stack: Stack) -> None:
    with httpx.Client(http1=False, http2=True) as client:  # cleartext HTTP/2 with prior knowledge
        reply = client.post(
            stack.url + "/v1/chat/completions",
            content=b'{\n"model": "gpt-4o-mini", "messages": []}',
            headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
        )
    assert reply.http_version == "HTTP/2"
    assert reply.status_code == 200 and reply.content == b'{"ok": true}'
    assert len(stack.upstream.requests) == 1


# --- the buffer on its own: any split of the input, the same answer as one piece ----------------------------------

HEAD = head() + BODY


def feed(buffer: ReceiveBuffer, pieces: list[bytes]) -> list[bytearray] | None:
    """Add the pieces one at a time, as reads would, asking for the head after each: the head's lines."""
    lines = None
    for piece in pieces:
        buffer += piece
        if lines is None:
            lines = buffer.maybe_extract_lines()
    return lines


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@given(st.lists(st.integers(min_value=0), max_size=12))
def test_a_crlf_head_gives_h11s_own_lines_however_it_is_split(cuts: list[int]) -> None:
    pieces = split(HEAD, cuts)
    strict = h11_strict.StrictReceiveBuffer()
    assert feed(strict, pieces) == feed(ReceiveBuffer(), [HEAD])
    assert bytes(strict) == BODY  # the body is left where h11 leaves it


@given(st.integers(min_value=0, max_value=len(head()) - 1), st.lists(st.integers(min_value=0), max_size=12))
def test_a_bare_lf_anywhere_in_the_head_is_refused_however_it_is_split(at: int, cuts: list[int]) -> None:
    lf = b"x\n" if head()[at - 1 : at] == b"\r" else b"\n"  # after a CR, an LF would make a CRLF
    data = head()[:at] + lf + head()[at:] + BODY
    with pytest.raises(h11.LocalProtocolError, match="bare LF"):
        feed(h11_strict.StrictReceiveBuffer(), split(data, cuts))


def test_install_is_idempotent() -> None:
    from hypercorn.protocol.h11 import H11Protocol

    h11_strict.install()
    patched = H11Protocol.__init__
    h11_strict.install()
    assert H11Protocol.__init__ is patched


@pytest.mark.parametrize("package", ["hypercorn", "h11"])
def test_install_refuses_other_versions(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9" if name == package else real(name))
    with pytest.raises(RuntimeError, match=rf"{package} 9\.9\.9 is installed"):
        h11_strict.install()
