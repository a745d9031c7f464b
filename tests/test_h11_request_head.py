"""`proxy.h11_request_head`: hypercorn's server reads a request head in two regex passes, and reads exactly what
h11's own reader reads: the same request, the same refusal, the same bytes left for the body.

The reference is h11's reader on the same strict buffer hypercorn's connections have (`proxy.h11_strict`). End
to end, every test that talks to the proxy over HTTP/1.1 goes through the fast reader (it is installed with the
other hypercorn extensions), and `tests/test_h11_strict.py` still sees bare LFs refused with a 400.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
from h11 import _readers
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import h11_request_head
from proxy.h11_strict import StrictReceiveBuffer

h11_request_head.install()

H11_READER: Any = _readers.maybe_read_from_IDLE_client
INSTALLED: Any = _readers.READERS[(h11.CLIENT, h11.IDLE)]

SDK_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
    b"User-Agent: OpenAI/Python 1.99.0\r\nX-Stainless-Lang: python\r\nX-Stainless-OS: Linux\r\n"
    b"Authorization: Bearer sk-abc\r\nX-Stainless-Retry-Count: 0\r\nContent-Length: 120\r\n\r\n"
)


def outcome(reader: Any, wire: bytes) -> tuple[Any, ...]:
    buf = StrictReceiveBuffer()
    buf += wire
    try:
        event = reader(buf)
    except h11.LocalProtocolError as exc:
        return ("refused", str(exc), bytes(buf))
    if event is None:
        return ("incomplete", bytes(buf))
    return (
        "request",
        event.method,
        event.target,
        event.http_version,
        list(event.headers.raw_items()),
        list(event.headers),
        bytes(buf),
    )


def test_a_plain_head_takes_the_fast_path_and_reads_as_h11_reads_it() -> None:
    buf = StrictReceiveBuffer()
    buf += SDK_HEAD + b"{}"
    request = h11_request_head.read_request_head(buf)
    assert request is not None
    assert bytes(buf) == b"{}"
    assert outcome(INSTALLED, SDK_HEAD + b"{}") == outcome(H11_READER, SDK_HEAD + b"{}")
    assert (b"content-length", b"120") in list(request.headers)
    assert (b"User-Agent", b"OpenAI/Python 1.99.0") in request.headers.raw_items()


@pytest.mark.parametrize(
    "wire",
    [
        SDK_HEAD.replace(b"Accept: application/json", b"Accept:\tapplication/json \t"),  # OWS both sides
        SDK_HEAD.replace(b"Accept: application/json", b"Accept:"),  # an empty value
        SDK_HEAD.replace(b"Accept: application/json", b"Accept: a\xffb c"),  # obs-text, inner SP
        SDK_HEAD.replace(b"Accept: application/json", b"Accept: a\r\n b"),  # an obsolete line fold: h11's
        SDK_HEAD.replace(b"Accept: application/json", b"Accept: a\x00b"),  # refused
        SDK_HEAD.replace(b"Accept: application/json", b"Accept: a\x0bb"),  # refused
        SDK_HEAD.replace(b"Accept: application/json", b"Accept : x"),  # refused: space before the colon
        SDK_HEAD.replace(b"Accept: application/json\r\n", b"Accept: x\nY: z\r\n"),  # bare LF: refused
        SDK_HEAD.replace(b"Host: 127.0.0.1:8080\r\n", b""),  # no Host on HTTP/1.1: refused by the Request
        SDK_HEAD.replace(b"Content-Length: 120", b"Content-Length: 120, 120"),  # h11 folds equal lengths
        SDK_HEAD.replace(b"Content-Length: 120", b"Content-Length: 1, 2"),  # refused
        SDK_HEAD[:-2],  # not complete yet
        b"\r\n" + SDK_HEAD,  # a leading empty line: h11's "no request line"
        SDK_HEAD.replace(b"HTTP/1.1", b"HTTP/1.0").replace(b"Host: 127.0.0.1:8080\r\n", b""),
    ],
)
def test_edge_heads_read_as_h11_reads_them(wire: bytes) -> None:
    assert outcome(INSTALLED, wire + b"body") == outcome(H11_READER, wire + b"body")


# Mostly well-formed heads (so the fast path is taken), with the bytes that matter to the patterns mixed in:
# token characters and separators, each kind of whitespace, NUL, controls, obs-text, the colon.
_ODD = list(b":;,/ \t\r\n\x00\x01\x0b\x0c\x7f\x80\xff")
odd = st.lists(st.sampled_from(_ODD + list(b"aZ09-!|~")), min_size=1, max_size=6).map(bytes)
token = st.text(alphabet="abcXYZ019-!|~_.", min_size=1, max_size=8).map(str.encode)
visible = st.lists(st.sampled_from(list(b'aZ09-,;=/"\x80\xff \t')), max_size=10).map(bytes)
name = st.sampled_from([b"host", b"Content-Length", b"transfer-encoding"]) | token | token | odd
value = st.sampled_from([b"1", b"chunked", b" v ", b"", b"a, b", b"1, 1"]) | visible | visible | odd
line_end = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\n "])
separator = st.sampled_from([b":"] * 3 + [b": ", b":\t", b" :", b""])
field = st.tuples(name, separator, value, line_end).map(b"".join)
request_line = st.tuples(
    st.sampled_from([b"POST", b"GET"]) | token | odd,
    st.sampled_from([b" "] * 4 + [b"  ", b"\t"]),
    st.sampled_from([b"/v1/chat/completions", b"*", b"/a?b=c"]) | token.map(lambda t: b"/" + t) | odd,
    st.sampled_from([b" HTTP/1.1"] * 4 + [b" HTTP/1.0", b" HTTP/2", b" http/1.1", b"HTTP/1.1"]),
    line_end,
).map(b"".join)
heads = st.tuples(
    request_line,
    st.lists(field, max_size=6),
    st.sampled_from([b"host: x\r\n", b""]),
    st.sampled_from([b"\r\n"] * 4 + [b"\n", b""]),
    st.sampled_from([b"", b"body", b"\r\n\r\n"]),
).map(lambda parts: parts[0] + b"".join(parts[1]) + parts[2] + parts[3] + parts[4])


@settings(max_examples=500)
@given(heads)
def test_any_head_reads_as_h11_reads_it(wire: bytes) -> None:
    assert outcome(INSTALLED, wire) == outcome(H11_READER, wire)


def test_install_is_idempotent_and_refuses_another_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    h11_request_head.install()
    assert _readers.READERS[(h11.CLIENT, h11.IDLE)] is INSTALLED
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.17.0")
    with pytest.raises(RuntimeError, match="h11 0.16.x"):
        h11_request_head.install()


def test_a_head_that_trickles_in_byte_by_byte_reads_as_a_whole_one() -> None:
    """As hypercorn's connection reads it: each byte received, then asked for the next event."""

    def request_of(pieces: list[bytes]) -> tuple[Any, ...]:
        connection = h11.Connection(h11.SERVER)
        connection._receive_buffer = StrictReceiveBuffer()
        for piece in pieces:
            connection.receive_data(piece)
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                assert isinstance(event, h11.Request)
                return (event.method, event.target, list(event.headers.raw_items()))
        raise AssertionError("no request")

    wire = SDK_HEAD + b"{}"
    assert request_of([wire[i : i + 1] for i in range(len(wire))]) == request_of([wire])
