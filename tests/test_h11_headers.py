"""`proxy.h11_headers`: h11's response framing rebuilds give the same headers with fewer validations."""

from __future__ import annotations

from typing import Any

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


# Bytes that matter to the patterns: token characters, separators, whitespace of each kind, NUL, controls,
# obs-text, the NUL and LF the one-pass check joins with.
_ALPHABET = list(b"aZ09-!|~:;, \t\r\n\x00\x01\x0b\x0c\x7f\x80\xff") + list(b"content-lngthrasfchuked")
raw = st.lists(st.sampled_from(_ALPHABET), max_size=14).map(bytes)
framing_name = st.sampled_from([b"Content-Length", b"content-length", b"Transfer-Encoding", b"transfer-encoding"])
framing_value = st.sampled_from([b"5", b"5, 5", b"5, 6", b"05", b"-1", b"chunked", b"Chunked", b"gzip", b" 5"])
# A value that holds what the one-pass check joins fields with: two fields' worth, if a check were missing.
smuggling = st.builds(lambda a, name, b: a + b"\n" + name + b"\x00" + b, raw, token.map(str.encode), raw)
# A name with a separator inside: one field's worth of name and value, if the separator were a token's neighbour.
split_name = st.builds(
    lambda a, sep, b: a + sep + b,
    token.map(str.encode),
    st.sampled_from([b":", b"\x00", b"\n", b" "]),
    token.map(str.encode),
)
any_fields = st.lists(
    st.one_of(
        st.tuples(raw, raw),
        st.tuples(split_name, token.map(str.encode)),
        st.tuples(token.map(str.encode), raw),
        st.tuples(token.map(str.encode), smuggling),
        st.tuples(framing_name, framing_value),
    ),
    max_size=8,
)


def h11_says(headers: list[tuple[bytes, bytes]], validate: object) -> object:
    assert callable(validate)
    try:
        return list(validate(headers)._full_items)
    except h11.LocalProtocolError as exc:
        return ("refused", str(exc))


@given(any_fields)
def test_one_pass_validation_accepts_and_refuses_what_h11_does(headers: list[tuple[bytes, bytes]]) -> None:
    """The events' validation (one pass over the list) against h11's own (two regexes per field): the same
    normalized list, or the same error."""
    from h11 import _events

    ours = getattr(_events, "normalize_and_validate")  # noqa: B009 - not re-exported
    assert ours is not _headers.normalize_and_validate  # installed
    assert h11_says(headers, ours) == h11_says(headers, _headers.normalize_and_validate)


@pytest.mark.parametrize(
    "headers",
    [
        [("x-a", "1")],  # str: h11 takes them and encodes
        [(bytearray(b"x-a"), b"1")],
        [[b"x-a", b"1"]],  # a list, not a tuple
        [(b"x-a", b"1", b"2")],
    ],
)
def test_other_header_shapes_are_h11s_to_judge(headers: Any) -> None:
    from h11 import _events

    ours = getattr(_events, "normalize_and_validate")  # noqa: B009 - not re-exported
    outcomes: list[object] = []
    for validate in (ours, _headers.normalize_and_validate):
        try:
            outcomes.append(list(validate(headers)._full_items))
        except Exception as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]
