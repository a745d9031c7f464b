"""`proxy.h11_headers`: h11's response framing rebuilds give the same headers with fewer validations."""

from __future__ import annotations

import h11
import pytest
from h11 import _connection, _headers
from hypothesis import given
from hypothesis import strategies as st

from proxy import h11_headers

h11_headers.install()

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
value = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,;=/-_.", max_size=30)
fields = st.lists(st.tuples(token, value.map(str.strip)), max_size=12)


@given(fields, st.sampled_from([b"content-length", b"transfer-encoding", b"connection"]), st.lists(token, max_size=2))
def test_the_rebuild_is_h11s_own(headers: list[tuple[str, str]], name: bytes, new: list[str]) -> None:
    normalized = _headers.normalize_and_validate(
        [(n.encode(), v.encode()) for n, v in headers if n not in ("content-length", "transfer-encoding")]
    )
    # What h11 sets: Content-Length cleared, Transfer-Encoding chunked or cleared, Connection tokens.
    values = {
        b"content-length": [],
        b"transfer-encoding": [b"chunked"] if new else [],
        b"connection": [v.encode() for v in new],
    }[name]
    ours = _connection.set_comma_header(normalized, name, values)
    theirs = _headers.set_comma_header(normalized, name, values)
    assert ours is not theirs
    assert list(ours._full_items) == list(theirs._full_items)


def response_bytes(headers: list[tuple[bytes, bytes]], keep_alive: bool = True) -> bytes:
    connection = h11.Connection(h11.SERVER)
    close = b"" if keep_alive else b"connection: close\r\n"
    connection.receive_data(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n" + close + b"\r\n")
    connection.next_event()
    connection.next_event()
    data = connection.send(h11.Response(status_code=200, headers=headers))
    assert data is not None
    return data


@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_response_head_is_framed_as_before(keep_alive: bool) -> None:
    head = response_bytes([(b"content-type", b"text/event-stream"), (b"x-a", b"1")], keep_alive)
    # A body of unknown length on HTTP/1.1: chunked; Connection: close when the client asked for it.
    expected = b"HTTP/1.1 200 \r\ncontent-type: text/event-stream\r\nx-a: 1\r\nTransfer-Encoding: chunked\r\n"
    assert head == expected + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n"


@pytest.mark.parametrize("bad", [(b"x-a", b"1\r\nx-b: 2"), (b"x a", b"1"), (b"x-a", b"\x00")])
def test_a_bad_header_is_still_refused(bad: tuple[bytes, bytes]) -> None:
    with pytest.raises(h11.LocalProtocolError):
        response_bytes([bad])


def test_install_is_idempotent_and_refuses_another_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    patched = _connection.set_comma_header
    h11_headers.install()
    assert _connection.set_comma_header is patched
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.17.0")
    with pytest.raises(RuntimeError, match="h11 0.16.x"):
        h11_headers.install()
