"""The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), sans-I/O.

Theory of operation
-------------------
A stream is a sequence of messages, each self-delimiting (AWS "Event stream encoding"):

    total length (u32) | headers length (u32) | prelude CRC32 (u32) | headers | payload | message CRC32 (u32)

all big-endian; the prelude CRC covers the first 8 bytes, the message CRC everything before it. A header is
`name length (u8) | name | type (u8) | value`, the value's encoding set by its type (bool true/false, byte,
short, int, long, bytes and string with a u16 length, timestamp, uuid).

Decoding is botocore's (`botocore.eventstream`, the decoder boto3 itself uses; checked against the official
codec vectors in the test suite). botocore's buffer appends every feed to one bytes object and re-slices it per
message, which is quadratic when a large message arrives in many small reads; so `EventStreamDecoder` collects
the pieces of one message itself (the prelude says how long it is) and hands botocore whole messages only.

botocore has no encoder (it only reads streams), so `encode_message` is written here: it is a dozen lines of
`struct` and `zlib.crc32`, used for proxy-made exception frames and by the demo upstream.

Limits: a message may not be longer than `MAX_MESSAGE_BYTES` (botocore's own bounds: 128 KiB of headers and
16 MiB of payload); past it, or on any checksum or header error, `FrameError` is raised and the decoder is
spent. Forwarding never depends on this parser.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from botocore import eventstream as _botocore

from proxy.parsers.sse import FrameError

PRELUDE_BYTES = 12
MAX_MESSAGE_BYTES = PRELUDE_BYTES + 128 * 1024 + 16 * 1024 * 1024 + 4
_MIN_MESSAGE_BYTES = PRELUDE_BYTES + 4

HeaderValue = bool | int | bytes | str


@dataclass(frozen=True, slots=True)
class Message:
    headers: dict[str, HeaderValue]
    payload: bytes


class EventStreamDecoder:
    """`feed(bytes) -> list[Message]`; raises `FrameError` on a corrupt or oversized message."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0
        self._need = 0  # total length of the message being collected, once its prelude is known
        self._failed = False
        self._deferred = False  # failed after returning whole messages; not raised yet

    def feed(self, data: bytes) -> list[Message]:
        if self._failed:
            self._deferred = False
            raise FrameError("the event stream decoder failed earlier")
        if data:
            self._pieces.append(data)
            self._size += len(data)
        messages: list[Message] = []
        try:
            return self._collect(messages)
        except FrameError:
            if not messages:
                raise
            self._deferred = True  # deliver what was whole; the next feed() or close() raises
            return messages

    def _collect(self, messages: list[Message]) -> list[Message]:
        # One join per feed, then a cursor over it: a read holding many messages costs one copy, not one each.
        if self._size < max(self._need, PRELUDE_BYTES):
            return messages
        buf = b"".join(self._pieces) if len(self._pieces) != 1 else self._pieces[0]
        pos = 0
        try:
            while True:
                if not self._need:
                    if len(buf) - pos < PRELUDE_BYTES:
                        return messages
                    total = struct.unpack_from(">I", buf, pos)[0]
                    if total < _MIN_MESSAGE_BYTES or total > MAX_MESSAGE_BYTES:
                        self._fail(f"event stream message length {total} is out of bounds")
                    if zlib.crc32(buf[pos : pos + 8]) != struct.unpack_from(">I", buf, pos + 8)[0]:
                        self._fail("event stream prelude checksum mismatch")
                    self._need = total
                if len(buf) - pos < self._need:
                    return messages
                end = pos + self._need
                self._need = 0
                messages.append(self._decode(buf[pos:end]))
                pos = end
        finally:
            if not self._failed:
                rest = buf[pos:] if pos else buf
                self._pieces = [rest] if rest else []
                self._size = len(rest)

    def close(self) -> list[Message]:
        """End of stream: bytes of an unfinished message are a truncated stream."""
        if self._deferred:
            self._deferred = False
            raise FrameError("the event stream decoder failed earlier")
        if self._size and not self._failed:
            self._fail(f"event stream ended inside a message ({self._size} bytes left over)")
        return []

    @property
    def at_boundary(self) -> bool:
        return self._size == 0

    def _decode(self, message: bytes) -> Message:
        buffer = _botocore.EventStreamBuffer()
        buffer.add_data(message)
        try:
            decoded = buffer.next()
        except (_botocore.ParserError, StopIteration, ValueError, struct.error, UnicodeDecodeError, KeyError) as exc:
            self._fail(f"corrupt event stream message: {type(exc).__name__}")
        return Message(headers=dict(decoded.headers), payload=bytes(decoded.payload))

    def _fail(self, why: str) -> None:
        self._failed = True
        self._pieces.clear()
        self._size = 0
        raise FrameError(why)


def _header(name: str, value: str | bytes) -> bytes:
    raw_name = name.encode()
    if isinstance(value, str):
        raw, kind = value.encode(), 7
    else:
        raw, kind = value, 6
    return struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", kind, len(raw)) + raw


def encode_message(headers: dict[str, str | bytes], payload: bytes) -> bytes:
    """One event-stream message with string (or byte-array) headers, checksums included."""
    head = b"".join(_header(name, value) for name, value in headers.items())
    total = PRELUDE_BYTES + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event_frame(event_type: str, payload: bytes) -> bytes:
    """An `event` message, as Bedrock sends them (`:event-type` names the member of the stream union)."""
    return encode_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}, payload
    )


def exception_frame(exception_type: str, payload: bytes) -> bytes:
    """An `exception` message: botocore raises it as an error named by `:exception-type`."""
    return encode_message(
        {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"},
        payload,
    )
