"""The AWS event-stream decoder: the official codec vectors decode (or are refused) whole, byte by byte and in any
chunks; what `encode_message` writes, botocore itself reads back; any input gives messages or FrameError."""

from __future__ import annotations

import pathlib
import struct
import zlib

import pytest
from botocore.eventstream import EventStreamBuffer, EventStreamHeaderParser
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.parsers.eventstream import (
    MAX_MESSAGE_BYTES,
    EventStreamDecoder,
    Message,
    encode_message,
    event_frame,
    exception_frame,
)
from proxy.parsers.sse import FrameError
from tests.conftest import SHARED_FIXTURES

VECTORS = SHARED_FIXTURES / "bedrock" / "eventstream_vectors"
PAYLOAD = b"{'foo':'bar'}"
# The decoded side of smithy-typescript's TestVectors.fixture.ts (aws-sdk-go's testdata/decoded), by file name.
SUCCESS = {
    "success_all_headers.bin": Message(
        headers={
            "event-type": 40972,
            "content-type": "application/json",
            "bool false": False,
            "bool true": True,
            "byte": -49,
            "byte buf": b"I'm a little teapot!",
            "timestamp": 8675309,
            "int16": 42,
            "int64": 42424242,
            "uuid": bytes(range(1, 17)),
        },
        payload=PAYLOAD,
    ),
    "success_empty_message.bin": Message(headers={}, payload=b""),
    "success_int32_header.bin": Message(headers={"event-type": 40972}, payload=PAYLOAD),
    "success_payload_no_headers.bin": Message(headers={}, payload=PAYLOAD),
    "success_payload_one_str_header.bin": Message(headers={"content-type": "application/json"}, payload=PAYLOAD),
}
FAILURE = [
    "failure_corrupted_header_len.bin",
    "failure_corrupted_headers.bin",
    "failure_corrupted_length.bin",
    "failure_corrupted_payload.bin",
]


def vector(shared_fixtures: pathlib.Path, name: str) -> bytes:
    return (shared_fixtures / "bedrock" / "eventstream_vectors" / name).read_bytes()


def decode(data: bytes, sizes: list[int] | None = None) -> list[Message]:
    """Feed `data` in pieces of `sizes` (then the rest), close, and return every message."""
    decoder = EventStreamDecoder()
    messages: list[Message] = []
    pos = 0
    for size in sizes or []:
        messages += decoder.feed(data[pos : pos + size])
        pos += size
    messages += decoder.feed(data[pos:])
    messages += decoder.close()
    return messages


def test_all_nine_vectors_are_present_when_shared_is() -> None:
    if SHARED_FIXTURES.is_dir():
        assert sorted(p.name for p in VECTORS.iterdir()) == sorted([*SUCCESS, *FAILURE])


@pytest.mark.parametrize("name", sorted(SUCCESS))
def test_success_vector_whole_byte_by_byte_and_with_trailing_data(shared_fixtures: pathlib.Path, name: str) -> None:
    data = vector(shared_fixtures, name)
    assert decode(data) == [SUCCESS[name]]
    assert decode(data, [1] * len(data)) == [SUCCESS[name]]
    decoder = EventStreamDecoder()
    assert decoder.feed(data + data[:7]) == [SUCCESS[name]]  # the start of a next message waits for the rest
    assert not decoder.at_boundary
    with pytest.raises(FrameError):
        decoder.close()  # ... and a stream that ends inside it is truncated


@pytest.mark.parametrize("name", FAILURE)
def test_failure_vector_is_refused_whole_and_byte_by_byte(shared_fixtures: pathlib.Path, name: str) -> None:
    data = vector(shared_fixtures, name)
    with pytest.raises(FrameError):
        decode(data)
    decoder = EventStreamDecoder()
    with pytest.raises(FrameError):
        for i in range(len(data)):
            decoder.feed(data[i : i + 1])
        decoder.close()
    with pytest.raises(FrameError):
        decoder.feed(vector(shared_fixtures, "success_empty_message.bin"))  # a failed decoder stays failed


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_vectors_in_any_chunks_give_the_same_messages(shared_fixtures: pathlib.Path, data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(sorted(SUCCESS)), min_size=1, max_size=8))
    stream = b"".join(vector(shared_fixtures, n) for n in names)
    sizes = data.draw(st.lists(st.integers(min_value=0, max_value=300), max_size=40))
    assert decode(stream, sizes) == [SUCCESS[n] for n in names]


header_names = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 255)
header_values = st.text(max_size=60) | st.binary(max_size=60)


@settings(max_examples=200, deadline=None)
@given(headers=st.dictionaries(header_names, header_values, max_size=6), payload=st.binary(max_size=2000))
def test_encode_message_round_trips_through_botocore(headers: dict[str, str | bytes], payload: bytes) -> None:
    frame = encode_message(headers, payload)
    buffer = EventStreamBuffer()
    buffer.add_data(frame)
    [theirs] = list(buffer)
    assert (dict(theirs.headers), bytes(theirs.payload)) == (headers, payload)
    assert decode(frame, [3] * (len(frame) // 3)) == [Message(headers=dict(headers), payload=payload)]


def test_event_and_exception_frames_carry_the_headers_botocore_dispatches_on() -> None:
    [event, exception] = decode(event_frame("metadata", b"{}") + exception_frame("throttlingException", b"{}"))
    assert event.headers == {":event-type": "metadata", ":content-type": "application/json", ":message-type": "event"}
    assert exception.headers[":message-type"] == "exception"
    assert exception.headers[":exception-type"] == "throttlingException"


def frame(head: bytes, payload: bytes = b"", total: int | None = None) -> bytes:
    """A message with the given raw header block and correct checksums (even when the header block is nonsense)."""
    length = total if total is not None else 16 + len(head) + len(payload)
    prelude = struct.pack(">II", length, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack(">I", zlib.crc32(body))


def outcome(data: bytes) -> list[Message] | str:
    """What the decoder makes of `data`: its messages, or "FrameError". Anything else it raises fails the test."""
    try:
        return decode(data)
    except FrameError:
        return "FrameError"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_give_messages_or_frame_error(data: bytes) -> None:
    outcome(data)


def botocore_key_error(head: bytes) -> bool:
    """botocore's header parser meets a value type byte past 9 (a KeyError the decoder must turn into FrameError)."""
    try:
        EventStreamHeaderParser().parse(head)
    except KeyError:
        return True
    except Exception:  # everything else it raises, the decoder turns into FrameError
        return False
    return False


header = st.tuples(st.binary(max_size=12), st.integers(min_value=0, max_value=9), st.binary(max_size=20)).map(
    lambda t: bytes([len(t[0])]) + t[0] + bytes([t[1]]) + t[2]
)


@settings(max_examples=300, deadline=None)
@given(head=st.lists(header, max_size=4).map(b"".join), cut=st.integers(0, 8), payload=st.binary(max_size=40))
def test_any_header_block_under_valid_checksums_gives_messages_or_frame_error(
    head: bytes, cut: int, payload: bytes
) -> None:
    # Checksums catch transport damage only: a header block the upstream wrote wrong must still only cost usage.
    head = head[: max(len(head) - cut, 0)]
    assume(not botocore_key_error(head))
    outcome(frame(head, payload))


def test_unknown_header_value_type_is_a_frame_error() -> None:
    assert outcome(frame(b"\x01a\x0a")) == "FrameError"  # header "a" of type 10: types end at 9 (uuid)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_vector_gives_messages_or_frame_error(shared_fixtures: pathlib.Path, data: st.DataObject) -> None:
    original = vector(shared_fixtures, data.draw(st.sampled_from(sorted(SUCCESS))))
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        raw[data.draw(st.integers(min_value=0, max_value=len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    assume(raw != original)  # two flips of the same bits undo each other
    assert outcome(bytes(raw)) == "FrameError"  # CRC32: an undetected corruption has odds of 2**-32


def test_message_longer_than_the_limit_is_refused_before_it_is_buffered() -> None:
    decoder = EventStreamDecoder()
    prelude = struct.pack(">II", MAX_MESSAGE_BYTES + 1, 0)
    with pytest.raises(FrameError, match="out of bounds"):
        decoder.feed(prelude + struct.pack(">I", zlib.crc32(prelude)))


def test_messages_before_a_corrupt_one_in_the_same_read_are_delivered() -> None:
    good = event_frame("messageStart", b'{"role":"assistant"}')
    bad = bytearray(event_frame("metadata", b'{"usage":{}}'))
    bad[-6] ^= 0x20  # a payload byte: the message checksum fails
    decoder = EventStreamDecoder()
    assert decoder.feed(good + bytes(bad)) == decode(good)  # a meter keeps what it read before the damage
    with pytest.raises(FrameError):
        decoder.close()  # ... and still learns of the damage
