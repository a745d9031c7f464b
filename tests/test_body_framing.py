"""The upstream body readers (`proxy.parsers.body`): the body bytes, wherever the network cuts the input."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.parsers.body import BodyError, ChunkedBody, CloseBody, LengthBody, reader_for


def chunked(pieces: list[bytes], extension: bytes = b"", trailers: bytes = b"") -> bytes:
    return b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in pieces if p) + b"0\r\n" + trailers + b"\r\n"


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def feed_all(reader: ChunkedBody | LengthBody | CloseBody, parts: list[bytes]) -> bytes:
    return b"".join(reader.feed(part) for part in parts)


pieces = st.lists(st.binary(min_size=0, max_size=300), max_size=12)
cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=20)


@settings(max_examples=300, deadline=None)
@given(pieces, cuts, st.sampled_from([b"", b";name=value", b" ;x"]), st.sampled_from([b"", b"x-usage: 1\r\n"]))
def test_chunked_gives_the_same_body_however_the_input_is_cut(
    body_pieces: list[bytes], where: list[int], extension: bytes, trailers: bytes
) -> None:
    wire = chunked(body_pieces, extension, trailers)
    reader = ChunkedBody()
    assert feed_all(reader, split_at(wire, where)) == b"".join(body_pieces)
    assert reader.done and reader.extra == b""
    reader.close()


@settings(max_examples=200, deadline=None)
@given(pieces, cuts, st.binary(min_size=1, max_size=40))
@example([b"data: 1\n\n"], [], b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
@example([b"x\r\n"], [], b"\r\n\r\n")
@example([b"x"], [3, 4, 5, 6, 7, 8, 9], b"\r\n")
def test_bytes_after_the_last_chunk_are_kept_apart_never_body(
    body_pieces: list[bytes], where: list[int], after: bytes
) -> None:
    reader = ChunkedBody()
    body = feed_all(reader, split_at(chunked(body_pieces) + after, where))
    assert body == b"".join(body_pieces)
    assert reader.done and reader.extra == after


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500), st.integers(0, 600), cuts)
def test_content_length_body_stops_at_its_length(data: bytes, length: int, where: list[int]) -> None:
    reader = LengthBody(length)
    body = feed_all(reader, split_at(data, where))
    assert body == data[:length]
    assert reader.done == (len(data) >= length)
    assert reader.extra == data[length:]
    if len(data) < length:
        with pytest.raises(BodyError):
            reader.close()


def outcome(parts: list[bytes]) -> tuple[bytes, bytes] | str:
    reader = ChunkedBody()
    try:
        body = feed_all(reader, parts)
        reader.close()
    except BodyError:
        return "BodyError"
    return body, reader.extra


@settings(max_examples=400, deadline=None)
@given(
    pieces,
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=1 << 16),
            st.sampled_from([b"0x", b"0X", b"_", b" ", b"+", b"-", b"g", b"\r", b"\n", b"A", b"00", b";", b"\r\n"]),
        ),
        max_size=3,
    ),
)
def test_a_whole_read_and_a_byte_at_a_time_agree_on_any_wire(
    body_pieces: list[bytes], edits: list[tuple[int, bytes]]
) -> None:
    # A whole read takes the fast path for plain chunks; a byte at a time never holds a whole chunk, so the state
    # machine reads every byte. On valid wire and broken alike they must agree: the same body, or BodyError.
    wire = chunked(body_pieces)
    for where, text in edits:
        at = where % (len(wire) + 1)
        wire = wire[:at] + text + wire[at:]
    assert outcome([wire]) == outcome([wire[i : i + 1] for i in range(len(wire))])


def test_a_read_of_many_chunks_is_one_piece() -> None:
    frames = [b"data: %d\n\n" % i for i in range(100)]
    reader = ChunkedBody()
    assert reader.feed(chunked(frames)[:-5]) == b"".join(frames)


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\nab\r\n0\r\n\r\n",  # not hex
        b"-1\r\nab\r\n0\r\n\r\n",
        b"2\r\nabXY0\r\n\r\n",  # data not followed by CRLF
        b"2\nab\r\n0\r\n\r\n",  # a bare LF ends no size line
        b"\r\nab\r\n0\r\n\r\n",  # an empty size
        b"11111111111111111\r\n",  # more than 16 hex digits
        b"1" * 5000,  # a size past 64 bits
        b"2;na me\r\nab\r\n0\r\n\r\n",  # an extension name that is not a token
        b"2\r\nab\r\n0\r\nno-colon\r\n\r\n",  # a trailer line that is no field
    ],
)
def test_broken_chunked_framing_is_an_error_and_the_reader_is_spent(wire: bytes) -> None:
    reader = ChunkedBody()
    with pytest.raises(BodyError):
        reader.feed(wire)
        reader.close()
    with pytest.raises(BodyError):
        reader.feed(b"0\r\n\r\n")


def test_extensions_and_trailers_stream_through_however_long() -> None:
    # Nothing of them is held between reads, so no length limit is needed: they are checked and dropped.
    wire = chunked([b"hello"], b";name=" + b"v" * 100_000, b"x-long: " + b"w" * 100_000 + b"\r\n")
    reader = ChunkedBody()
    assert feed_all(reader, [wire[i : i + 4096] for i in range(0, len(wire), 4096)]) == b"hello"
    assert reader.done and reader.extra == b""


def test_a_chunked_body_cut_before_its_last_chunk_is_an_error() -> None:
    reader = ChunkedBody()
    assert reader.feed(b"5\r\nhello\r\n") == b"hello"
    with pytest.raises(BodyError):
        reader.close()


def test_a_close_delimited_body_ends_with_the_connection() -> None:
    reader = CloseBody()
    assert reader.feed(b"abc") == b"abc" and not reader.done
    reader.close()
    assert reader.done


@pytest.mark.parametrize(
    ("status", "headers", "kind"),
    [
        (200, [(b"transfer-encoding", b"chunked")], ChunkedBody),
        (200, [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], ChunkedBody),  # TE wins (§6.3)
        (200, [(b"content-length", b"5")], LengthBody),
        (200, [], CloseBody),
        (204, [(b"transfer-encoding", b"chunked")], LengthBody),
        (304, [], LengthBody),
    ],
)
def test_the_framing_follows_the_head(status: int, headers: list[tuple[bytes, bytes]], kind: type) -> None:
    assert type(reader_for(status, headers)) is kind
